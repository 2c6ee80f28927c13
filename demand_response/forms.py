"""The operators' form for a new demand-response event. The service validates the event as a
whole (the program's notice, eligible targets, end after start); its errors are shown on the
form's fields."""

from django import forms
from django.core.exceptions import ValidationError

from demand_response.models import Program, SignalType
from devices.models import Feeder, Site

# The service names its fields as the API does; the form's fields by those names.
SERVICE_FIELDS = {
    "program": "program",
    "start": "start",
    "end": "end",
    "signal": "signal_value",
    "targets": "target_sites",
    "randomization_s": "randomization_s",
}


class EventForm(forms.Form):
    program = forms.ModelChoiceField(Program.objects.all(), empty_label=None)
    start = forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    end = forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    signal_type = forms.ChoiceField(choices=SignalType.choices, label="Signal")
    signal_value = forms.DecimalField(
        max_digits=12,
        decimal_places=4,
        label="Signal value",
        help_text="The level (0-3), the reduction in kW, or the price.",
    )
    target_sites = forms.ModelMultipleChoiceField(
        Site.objects.order_by("name"),
        required=False,
        label="Sites",
        help_text="Ctrl- or ⌘-click to choose several.",
    )
    target_feeders = forms.ModelMultipleChoiceField(
        Feeder.objects.order_by("code"), required=False, label="Feeders"
    )
    randomization_s = forms.IntegerField(
        min_value=0,
        initial=0,
        label="Start randomization (s)",
        help_text="Each site starts up to this many seconds late.",
    )

    def service_arguments(self) -> dict:
        data = self.cleaned_data
        return {
            "program_id": data["program"].pk,
            "start": data["start"],
            "end": data["end"],
            "signal_type": data["signal_type"],
            "signal_value": data["signal_value"],
            "target_sites": [site.pk for site in data["target_sites"]],
            "target_feeders": [feeder.pk for feeder in data["target_feeders"]],
            "randomization_s": data["randomization_s"],
        }

    def add_service_errors(self, error: ValidationError) -> None:
        """Show the service's errors on the fields they name (others above the form)."""
        for name, messages in error.message_dict.items():
            for message in messages:
                self.add_error(SERVICE_FIELDS.get(name), message)
