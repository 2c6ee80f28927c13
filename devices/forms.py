from django import forms

from devices.models import DeviceKind, Feeder, Site

ONLINE_CHOICES = [("", "Any state"), ("true", "Online"), ("false", "Offline")]


class FleetFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Search", max_length=100)
    online = forms.TypedChoiceField(
        choices=ONLINE_CHOICES,
        required=False,
        coerce=lambda value: value == "true",
        empty_value=None,
    )
    kind = forms.ChoiceField(choices=[("", "Any kind"), *DeviceKind.choices], required=False)
    feeder = forms.ModelChoiceField(Feeder.objects.all(), required=False, empty_label="Any feeder")
    site = forms.ModelChoiceField(Site.objects.all(), required=False, empty_label="Any site")
