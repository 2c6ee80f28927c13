"""Filters shared by the list APIs: choices limited to what the caller may see, and a search term
whose errors name the `search` parameter."""

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
