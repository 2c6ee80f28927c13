"""Demand-response programs, their events, the invitations sites answer, the sites' standing
auto-responses, and what each site delivered and earned once an event is settled.

Modelled on OpenADR 2.0b: a program is what residents enrol in, an event one call for reduced load
over a window, an invitation one site's part in an event."""

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from devices.currency import validate_currency
from devices.models import Feeder, Site
from energy_portal.field_encryption import EncryptedTextField

MAX_LEVEL = 3


class BaselineMethod(models.TextChoices):
    TEN_IN_TEN = "10in10", "10 in 10 with day-of adjustment"


class Program(models.Model):
    """What residents enrol in: the rate paid per kWh delivered and which sites may be called.

    A site is eligible when it is listed or its feeder is; a program listing neither has none.
    """

    name = models.CharField(max_length=120, unique=True)
    reward_per_kwh = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Paid per kWh delivered, in the program's currency.",
    )
    currency = models.CharField(max_length=3, validators=[validate_currency])
    baseline_method = models.CharField(
        max_length=16, choices=BaselineMethod.choices, default=BaselineMethod.TEN_IN_TEN
    )
    notification_lead_time = models.DurationField(
        help_text="The least notice an event gives: its start is at least this far ahead."
    )
    eligible_sites = models.ManyToManyField(Site, blank=True, related_name="dr_programs")
    eligible_feeders = models.ManyToManyField(Feeder, blank=True, related_name="dr_programs")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(reward_per_kwh__gte=0), name="dr_program_reward_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(currency__regex=r"^[A-Z]{3}$"), name="dr_program_currency_iso"
            ),
            models.CheckConstraint(
                condition=Q(notification_lead_time__gte=timedelta(0)),
                name="dr_program_lead_time_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class SignalType(models.TextChoices):
    LEVEL = "level", "Level (0-3)"
    TARGET_KW = "target_kw", "Target reduction (kW)"
    PRICE = "price", "Price"


class EventStatus(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    ACTIVE = "active", "Active"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


class Event(models.Model):
    """One call for reduced load over [start, end). Status moves only through
    `demand_response.services`; each change is kept in `EventStatusChange`."""

    program = models.ForeignKey(Program, on_delete=models.PROTECT, related_name="events")
    start = models.DateTimeField()
    end = models.DateTimeField()
    signal_type = models.CharField(max_length=10, choices=SignalType.choices)
    signal_value = models.DecimalField(max_digits=12, decimal_places=4)
    target_sites = models.ManyToManyField(Site, blank=True, related_name="dr_events")
    target_feeders = models.ManyToManyField(Feeder, blank=True, related_name="dr_events")
    randomization_s = models.PositiveIntegerField(
        default=0, help_text="Each site starts up to this many seconds after the start."
    )
    status = models.CharField(
        max_length=10, choices=EventStatus.choices, default=EventStatus.SCHEDULED
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-start", "-id"]
        indexes = [models.Index(fields=["status", "start"], name="dr_event_status_start")]
        constraints = [
            models.CheckConstraint(
                condition=Q(end__gt=models.F("start")), name="dr_event_ends_after_start"
            ),
            models.CheckConstraint(
                condition=Q(status__in=EventStatus.values), name="dr_event_status_known"
            ),
            models.CheckConstraint(
                condition=Q(signal_type__in=SignalType.values), name="dr_event_signal_type_known"
            ),
            models.CheckConstraint(
                condition=~Q(signal_type=SignalType.LEVEL)
                | Q(signal_value__in=[Decimal(n) for n in range(MAX_LEVEL + 1)]),
                name="dr_event_level_0_to_3",
            ),
            models.CheckConstraint(
                condition=~Q(signal_type=SignalType.TARGET_KW) | Q(signal_value__gt=0),
                name="dr_event_target_kw_positive",
            ),
            models.CheckConstraint(
                condition=Q(randomization_s__gte=0), name="dr_event_randomization_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.program} event {self.pk} ({self.status})"

    @property
    def level(self) -> int | None:
        """The signal's level for a level signal, else None."""
        return int(self.signal_value) if self.signal_type == SignalType.LEVEL else None


class EventStatusChange(models.Model):
    """When an event reached a status. An event reaches each status at most once (the unique
    constraint), so a transition two workers race for is recorded once."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="status_changes")
    status = models.CharField(max_length=10, choices=EventStatus.choices)
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "status"], name="dr_event_status_once")
        ]

    def __str__(self) -> str:
        return f"event {self.event_id} {self.status} at {self.at:%Y-%m-%d %H:%M:%S}"


class InvitationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    OPTED_IN = "opted_in", "Opted in"
    OPTED_OUT = "opted_out", "Opted out"


class AnsweredBy(models.TextChoices):
    RESIDENT = "resident", "Resident"
    AUTO = "auto", "Auto-response"
    OPERATOR = "operator", "Operator"


class Invitation(models.Model):
    """One targeted site's part in an event and its answer."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="invitations")
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="dr_invitations")
    status = models.CharField(
        max_length=10, choices=InvitationStatus.choices, default=InvitationStatus.PENDING
    )
    answered_by = models.CharField(max_length=10, choices=AnsweredBy.choices, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    responder = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="dr_answers",
        help_text="Who answered, when a person did.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["event_id", "site_id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "site"], name="dr_invitation_once_per_site"),
            models.CheckConstraint(
                condition=Q(status=InvitationStatus.PENDING, answered_by="", answered_at=None)
                | (
                    ~Q(status=InvitationStatus.PENDING)
                    & ~Q(answered_by="")
                    & Q(answered_at__isnull=False)
                ),
                name="dr_invitation_answer_complete",
            ),
        ]

    def __str__(self) -> str:
        return f"event {self.event_id} → site {self.site_id}: {self.status}"


class AutoResponseMode(models.TextChoices):
    ACCEPT_ALL = "accept_all", "Accept all"
    DECLINE_ALL = "decline_all", "Decline all"
    ACCEPT_UP_TO_LEVEL = "accept_up_to_level", "Accept up to a level"


class SiteAutoResponse(models.Model):
    """How a site answers new invitations at once. `accept_up_to_level` accepts level signals up
    to `max_level` and declines higher ones; other signals it leaves to the resident."""

    site = models.OneToOneField(
        Site, on_delete=models.CASCADE, primary_key=True, related_name="dr_auto_response"
    )
    mode = models.CharField(max_length=20, choices=AutoResponseMode.choices)
    max_level = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_LEVEL)],
        help_text="Only for accept up to a level: the highest level accepted (0-3).",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    mode=AutoResponseMode.ACCEPT_UP_TO_LEVEL,
                    max_level__isnull=False,  # NULL <= 3 is not false: a check would pass it
                    max_level__lte=MAX_LEVEL,
                )
                | (~Q(mode=AutoResponseMode.ACCEPT_UP_TO_LEVEL) & Q(max_level=None)),
                name="dr_auto_response_level_iff_up_to_level",
            ),
            models.CheckConstraint(
                condition=Q(mode__in=AutoResponseMode.values), name="dr_auto_response_mode_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.site}: {self.get_mode_display()}"


class SettlementStatus(models.TextChoices):
    OK = "ok", "Settled"
    INSUFFICIENT_BASELINE = "insufficient_baseline", "Too few clean days for a baseline"
    INSUFFICIENT_ACTUAL = "insufficient_actual", "Data missing during the event"


def _kwh(**kwargs) -> models.DecimalField:
    return models.DecimalField(max_digits=14, decimal_places=4, **kwargs)


class SettlementResult(models.Model):
    """What one opted-in site delivered in a completed event and what it was paid (the ledger
    holds the payment itself). Written by `event_settle`, read by the report as it is."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="settlements")
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="dr_settlements")
    status = models.CharField(max_length=24, choices=SettlementStatus.choices)
    baseline_kwh = _kwh(null=True, blank=True)
    adjustment = models.DecimalField(
        max_digits=6,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="The day-of adjustment factor (0.8-1.2) the baseline was multiplied by.",
    )
    actual_kwh = _kwh(null=True, blank=True)
    delivered_kwh = _kwh(default=Decimal(0))
    reward = models.DecimalField(max_digits=14, decimal_places=4, default=Decimal(0))
    currency = models.CharField(max_length=3, validators=[validate_currency])
    days_used = models.JSONField(default=list, help_text="ISO dates of the baseline days.")
    settled_at = models.DateTimeField()

    class Meta:
        ordering = ["event_id", "site_id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "site"], name="dr_settlement_once_per_site"),
            models.CheckConstraint(
                condition=Q(delivered_kwh__gte=0), name="dr_settlement_delivered_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(status=SettlementStatus.OK) | Q(reward=0),
                name="dr_settlement_unpaid_unless_ok",
            ),
        ]

    def __str__(self) -> str:
        return f"event {self.event_id} site {self.site_id}: {self.status}"


class DispatchKind(models.TextChoices):
    CURTAIL = "curtail", "Curtail"
    RESTORE = "restore", "Restore"


class DispatchedCommand(models.Model):
    """A command an event sent one device of a site: the report reads its status (and when it
    was done) from the device's command. Each device gets one curtail and one restore per event
    at most (the unique constraint), however many workers dispatch."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="dispatched")
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="dr_dispatched")
    device = models.ForeignKey(
        "devices.Device", on_delete=models.CASCADE, related_name="dr_dispatched"
    )
    command = models.OneToOneField(
        "devices.Command", on_delete=models.CASCADE, related_name="dr_dispatch"
    )
    kind = models.CharField(max_length=8, choices=DispatchKind.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["event_id", "site_id", "device_id", "created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["event", "device", "kind"], name="dr_dispatch_once_per_device"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=DispatchKind.values), name="dr_dispatch_kind_known"
            ),
        ]

    def __str__(self) -> str:
        return f"event {self.event_id} {self.kind} → device {self.device_id}"


# --- OpenADR 2.0b: the portal as a VEN of utilities' VTNs (demand_response.openadr) ----------


class VenState(models.TextChoices):
    NEW = "new", "Not started"
    REGISTERING = "registering", "Registering"
    REGISTERED = "registered", "Registered, polling"
    UNREACHABLE = "unreachable", "VTN unreachable"
    FAILED = "failed", "Failed (restarting)"
    STOPPED = "stopped", "Stopped"


class OptRule(models.TextChoices):
    ANY_OPTED_IN = "any_opted_in", "Opt in when any targeted site has opted in"
    UNLESS_ALL_OUT = "unless_all_out", "Opt in unless every targeted site has opted out"
    ALWAYS_IN = "always_in", "Always opt in"


class VtnConnection(models.Model):
    """A utility's VTN the portal polls as an OpenADR 2.0b VEN (`manage.py run_openadr_ven`): the
    events it distributes become events of `program`. `state`, `last_poll_at`, `ven_id` and
    `registration_id` are written by the VEN process only."""

    vtn_url = models.URLField(
        "VTN URL",
        max_length=500,
        help_text="The VTN's OpenADR base URL, e.g. https://vtn.example/OpenADR2/Simple/2.0b",
    )
    ven_name = models.CharField(
        "VEN name", max_length=100, help_text="The name this VEN registers under."
    )
    client_cert = models.TextField(
        "client certificate",
        blank=True,
        help_text="PEM certificate the VEN signs its messages and TLS with.",
    )
    client_key = EncryptedTextField(blank=True, help_text="PEM private key of the certificate.")
    vtn_ca_cert = models.TextField(
        "VTN CA certificate",
        blank=True,
        help_text="PEM CA certificate(s) the VTN's TLS certificate is checked against.",
    )
    vtn_fingerprint = models.CharField(
        "VTN fingerprint",
        max_length=100,
        blank=True,
        help_text="The VTN certificate's fingerprint; when set, unsigned or foreign messages "
        "are refused.",
    )
    poll_interval_s = models.PositiveIntegerField(
        "poll interval (s)",
        default=10,
        validators=[MinValueValidator(1)],
        help_text="Seconds between polls.",
    )
    program = models.ForeignKey(Program, on_delete=models.PROTECT, related_name="vtn_connections")
    target_map = models.JSONField(
        default=dict,
        blank=True,
        help_text='OpenADR resource or group id -> {"feeders": [feeder codes], "sites": [site '
        "ids]}. An event whose targets are all unmapped (or absent) invites every eligible "
        "site of the program.",
    )
    opt_rule = models.CharField(
        max_length=16, choices=OptRule.choices, default=OptRule.ANY_OPTED_IN
    )
    enabled = models.BooleanField(default=True)
    state = models.CharField(max_length=12, choices=VenState.choices, default=VenState.NEW)
    state_detail = models.CharField(max_length=300, blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    last_poll_at = models.DateTimeField(null=True, blank=True)
    ven_id = models.CharField("VEN id", max_length=200, blank=True)
    registration_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Written by the VEN process only: read-only in the admin and the API.
    VEN_WRITTEN = (
        "state",
        "state_detail",
        "state_changed_at",
        "last_poll_at",
        "ven_id",
        "registration_id",
    )

    class Meta:
        verbose_name = "VTN connection"
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["vtn_url", "ven_name"], name="dr_vtn_ven_once"),
            models.CheckConstraint(
                condition=Q(poll_interval_s__gte=1), name="dr_vtn_poll_interval_positive"
            ),
            models.CheckConstraint(
                condition=Q(state__in=VenState.values), name="dr_vtn_state_known"
            ),
            models.CheckConstraint(
                condition=Q(opt_rule__in=OptRule.values), name="dr_vtn_opt_rule_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.ven_name} @ {self.vtn_url}"


class VtnEvent(models.Model):
    """Which of our events a VTN's event became: one per (connection, VTN event id), so an event
    distributed again (every poll, after a VEN restart) is never a second event. Keeps the
    modification number applied and the answer the VTN was last given."""

    connection = models.ForeignKey(
        VtnConnection, on_delete=models.PROTECT, related_name="vtn_events"
    )
    vtn_event_id = models.CharField("VTN event id", max_length=200)
    event = models.OneToOneField(Event, on_delete=models.CASCADE, related_name="vtn_source")
    modification_number = models.PositiveIntegerField()
    vtn_status = models.CharField(max_length=16, blank=True)
    market_context = models.CharField(max_length=500, blank=True)
    targets = models.JSONField(default=list, help_text="The VTN's targets, as it sent them.")
    opt_type = models.CharField(max_length=8, blank=True, help_text="The answer last given.")
    request_id = models.CharField(max_length=200, blank=True)
    received_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name = "VTN event"
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "vtn_event_id"], name="dr_vtn_event_once"
            ),
            models.CheckConstraint(
                condition=Q(opt_type__in=["", "optIn", "optOut"]), name="dr_vtn_event_opt_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.connection.ven_name}: {self.vtn_event_id} → event {self.event_id}"


class VtnMessageKind(models.TextChoices):
    CREATED_EVENT = "created_event", "oadrCreatedEvent (answer)"
    CREATE_OPT = "create_opt", "oadrCreateOpt (changed answer)"
    REPORT = "report", "oadrUpdateReport"


class VtnMessage(models.Model):
    """What the VEN told a VTN: its answers to events, changed answers, report values."""

    connection = models.ForeignKey(VtnConnection, on_delete=models.CASCADE, related_name="messages")
    vtn_event = models.ForeignKey(
        VtnEvent, on_delete=models.SET_NULL, null=True, blank=True, related_name="messages"
    )
    kind = models.CharField(max_length=16, choices=VtnMessageKind.choices)
    opt_type = models.CharField(max_length=8, blank=True)
    report_name = models.CharField(max_length=40, blank=True)
    value = models.FloatField(null=True, blank=True)
    ok = models.BooleanField(default=True, help_text="Whether the VTN acknowledged it.")
    detail = models.CharField(max_length=300, blank=True)
    sent_at = models.DateTimeField()

    class Meta:
        verbose_name = "VTN message"
        ordering = ["-sent_at", "-id"]
        indexes = [models.Index(fields=["connection", "-sent_at"], name="dr_vtn_message_recent")]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=VtnMessageKind.values), name="dr_vtn_message_kind_known"
            )
        ]

    def __str__(self) -> str:
        return f"{self.connection.ven_name}: {self.kind} at {self.sent_at:%Y-%m-%d %H:%M:%S}"
