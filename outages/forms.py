"""Form fields of the outages app: durations read as the API reads them."""

from datetime import timedelta

from django import forms
from django.core.exceptions import ValidationError
from django.db import models

from outages.credit_rules import DURATION_FORMS, duration_parse


class StrictDurationField(forms.DurationField):
    """A duration read as the API reads it (`credit_rules.duration_parse`): Django's own field
    would take "12" as 12 seconds and "00:61:00" as 61 minutes. For the admin of credit policies
    and of demand-response programmes."""

    default_error_messages = {"invalid": DURATION_FORMS}

    def to_python(self, value):
        if value in self.empty_values:
            return None
        if isinstance(value, timedelta):
            return value
        parsed = duration_parse(str(value))
        if parsed is None:
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        return parsed


# A model admin's durations read strictly (`formfield_overrides`).
STRICT_DURATIONS = {models.DurationField: {"form_class": StrictDurationField}}
