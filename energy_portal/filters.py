"""Filters shared by the list APIs: choices limited to what the caller may see, a search term
whose errors name the `search` parameter, and an ordering that refuses what it cannot do."""

from collections.abc import Callable

from rest_framework import filters
from rest_framework.exceptions import ValidationError

from django.db.models import Model, QuerySet


def visible_to_caller(model: type[Model], selector: Callable[..., QuerySet]) -> Callable:
    """A `queryset(request)` for django-filter's ModelChoiceFilter: the rows the caller may see.

    An id outside them is refused exactly as one that does not exist, so a resident cannot tell
    another resident's sites from missing ones, and the browsable API's filter form lists only
    their own.
    """

    def queryset(request) -> QuerySet:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return model.objects.none()
        return selector(user=user)

    return queryset


class SearchFilter(filters.SearchFilter):
    def get_search_terms(self, request):
        try:
            return super().get_search_terms(request)
        except ValidationError as exc:
            raise ValidationError({self.search_param: exc.detail}) from None


class OrderingFilter(filters.OrderingFilter):
    """DRF's ordering by the names the API shows (a view's `ordering_aliases` maps one to its
    model field: `start` for `started_at`), where a field the list cannot be ordered by is a 400
    naming `ordering` and the fields it can, not silently the default order. The id breaks
    ties, so pages of rows sharing a value (many sites' cuts start at one instant) neither
    repeat nor skip a row."""

    def get_ordering(self, request, queryset, view):
        raw = request.query_params.get(self.ordering_param)
        if not raw:
            return self.get_default_ordering(view)
        aliases = getattr(view, "ordering_aliases", {})
        asked = []
        for term in (term.strip() for term in raw.split(",")):
            if term:
                descending = term.startswith("-")
                name = term[1:] if descending else term  # `--start` stays unknown
                asked.append(("-" if descending else "") + aliases.get(name, name))
        valid = self.remove_invalid_fields(queryset, asked, view, request)
        if len(valid) != len(asked) or not valid:
            shown = {field: name for name, field in aliases.items()}
            fields = self.get_valid_fields(queryset, view, {"request": request})
            names = ", ".join(shown.get(field, field) for field, _ in fields)
            raise ValidationError(
                {self.ordering_param: [f"Order by {names} (- first for descending), got {raw!r}."]}
            )
        if not {"pk", "id", "-pk", "-id"} & set(valid):
            valid.append("-pk" if valid[-1].startswith("-") else "pk")
        return valid

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        fields = getattr(view, "ordering_fields", None)
        if isinstance(fields, list | tuple):
            shown = {field: name for name, field in getattr(view, "ordering_aliases", {}).items()}
            names = [shown.get(field, field) for field in fields]
            parameters[0]["description"] = (
                f"Order by {', '.join(names)}, several comma-separated; - first for descending."
            )
        return parameters
