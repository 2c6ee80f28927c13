"""Mains power reports from the devices; outages and credits are built on them."""

from django.db import models

from devices.models import Device, Site


class PowerState(models.TextChoices):
    LOST = "lost", "Mains lost"
    RESTORED = "restored", "Mains restored"


class PowerEvent(models.Model):
    """One `power` frame from a device, kept once however often the device repeats it."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="power_events")
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="power_events")
    state = models.CharField(max_length=10, choices=PowerState.choices)
    at = models.DateTimeField(help_text="When the device saw the change.")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "state", "at"], name="power_event_once_per_instant"
            )
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.state} at {self.at:%Y-%m-%d %H:%M:%S}"
