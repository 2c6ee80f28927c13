"""Mains power reports from the devices, the site outages built from them, the credit policies that
price a cut, and the ledger that pays residents for it."""

from datetime import timedelta
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from devices.currency import validate_currency
from devices.models import Device, Feeder, Site, Transformer
from outages import credit_rules


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


def _money(**kwargs) -> models.DecimalField:
    return models.DecimalField(
        max_digits=14,
        decimal_places=credit_rules.MAX_AMOUNT_DIGITS,
        validators=[MinValueValidator(Decimal(0))],
        **kwargs,
    )


class CreditPolicy(models.Model):
    """How much a resident is owed for a cut of a given length (see `outages.credit_rules`).

    `tiers` is a list of `{"after": "PT12H", "period": "PT12H", "amount": "45.00"}` (durations ISO
    8601 or HH:MM:SS, stored as ISO 8601), checked and normalised by `clean()`.
    """

    name = models.CharField(max_length=120, unique=True)
    currency = models.CharField(max_length=3, validators=[validate_currency])
    threshold = models.DurationField(help_text="No credit for a cut shorter than this.")
    base_amount = _money(help_text="Paid once the cut lasts the threshold.")
    tiers = models.JSONField(
        default=list,
        blank=True,
        help_text='A list of {"after": "PT12H", "period": "PT12H", "amount": "45.00"}: amount '
        "per period from after (measured from the cut's start) until the next tier's after.",
    )
    count_started_periods = models.BooleanField(
        default=False, help_text="Pay a period as soon as it starts, not only once it is whole."
    )
    cap = _money(null=True, blank=True, help_text="The most one cut can earn; empty for no cap.")
    min_sites_affected = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Pay only for outages affecting at least this many sites.",
    )
    is_default = models.BooleanField(
        default=False, help_text="Applies to every site without a policy of its own."
    )

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "credit policies"
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="credit_policy_one_default",
                violation_error_message="Another policy is already the default; unset it first.",
            ),
            models.CheckConstraint(
                condition=Q(currency__regex=r"^[A-Z]{3}$"), name="credit_policy_currency_iso"
            ),
            models.CheckConstraint(
                condition=Q(threshold__gte=timedelta(0)), name="credit_policy_threshold_positive"
            ),
            models.CheckConstraint(
                condition=Q(base_amount__gte=0), name="credit_policy_base_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(cap__isnull=True) | Q(cap__gte=0), name="credit_policy_cap_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(min_sites_affected__gte=1), name="credit_policy_min_sites_at_least_1"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        try:
            self.tiers = credit_rules.tiers_as_data(credit_rules.parse_tiers(self.tiers))
        except credit_rules.TierError as exc:
            errors["tiers"] = str(exc)
        if self.threshold is not None and self.threshold < timedelta(0):
            errors["threshold"] = "The threshold must not be negative."
        elif self.threshold is not None and self.threshold > credit_rules.MAX_DURATION:
            errors["threshold"] = f"The threshold is {credit_rules.TOO_LONG}."
        if self.cap is not None and self.currency:
            unit = credit_rules.minor_unit(self.currency)
            if self.cap != self.cap.quantize(unit):
                errors["cap"] = f"A {self.currency} cap is a whole number of {unit}."
        if errors:
            raise ValidationError(errors)


class SitePolicy(models.Model):
    """The credit policy of one site, in place of the default. Kept here, not on the site, because
    devices (the registry) must not know about outages."""

    site = models.OneToOneField(
        Site, on_delete=models.CASCADE, primary_key=True, related_name="credit_policy_choice"
    )
    policy = models.ForeignKey(CreditPolicy, on_delete=models.PROTECT, related_name="site_choices")

    class Meta:
        verbose_name = "site credit policy"
        verbose_name_plural = "site credit policies"

    def __str__(self) -> str:
        return f"{self.site} → {self.policy}"


class SiteReconcile(models.Model):
    """How many of the site's power events its last reconcile read: a site with more events than
    that has one its reconcile task never ran for (the broker was down when it was queued), and
    the sweep (`site_outages_sweep`) reconciles it. A count, not a time: an event committed
    after the reconcile read the table but stamped before it is still seen as missing."""

    site = models.OneToOneField(
        Site, on_delete=models.CASCADE, primary_key=True, related_name="outages_reconcile"
    )
    events = models.PositiveIntegerField()
    reconciled_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.site_id}: {self.events} events reconciled at {self.reconciled_at}"


class OutageKind(models.TextChoices):
    SITE = "site", "Site"
    FEEDER = "feeder", "Feeder"
    TRANSFORMER = "transformer", "Transformer"


class OutageStatus(models.TextChoices):
    OPEN = "open", "Open"
    ENDED = "ended", "Ended"
    # Once derived, no longer: later reports showed it started earlier, or was no cut at all.
    VOID = "void", "Void"


class Outage(models.Model):
    """A cut, derived from the power events (`outages.site_outages`); never edited by hand.

    A site outage keeps its row while late reports move its start or end (the live outages of a
    site never overlap, and a start is unique among them); it becomes void when it was no cut
    after all or merged into an earlier one. A feeder outage (`outages.grid_outages`) keeps its
    row the same way while its members regroup (a start is unique among the live ones of a
    feeder, and of a transformer), and is made void the same way; `grid_outage` links a site
    outage to its feeder outage and a feeder outage to its transformer outage.
    """

    kind = models.CharField(max_length=12, choices=OutageKind.choices, default=OutageKind.SITE)
    site = models.ForeignKey(
        Site, on_delete=models.CASCADE, null=True, blank=True, related_name="outages"
    )
    feeder = models.ForeignKey(
        Feeder, on_delete=models.CASCADE, null=True, blank=True, related_name="outages"
    )
    transformer = models.ForeignKey(
        Transformer, on_delete=models.CASCADE, null=True, blank=True, related_name="outages"
    )
    grid_outage = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="members",
        help_text="The feeder outage a site outage is part of; the transformer outage a feeder "
        "outage is part of.",
    )
    sites_affected = models.PositiveIntegerField(
        default=1,
        help_text="Sites the cut affected: for a site outage, those of the widest grid outage it "
        "is part of (what a policy's least number of sites is checked against).",
    )
    customer_minutes = models.DecimalField(
        max_digits=16,
        decimal_places=3,
        null=True,
        blank=True,
        help_text="Grid outages: the minutes of their sustained, ended site outages, summed "
        "(IEEE 1366); momentary cuts add none.",
    )
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    momentary = models.BooleanField(
        default=False, help_text="Shorter than the momentary threshold: counted, never paid."
    )
    status = models.CharField(max_length=8, choices=OutageStatus.choices, default=OutageStatus.OPEN)
    credit_policy = models.ForeignKey(
        CreditPolicy,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="outages",
        help_text="The policy it was first settled under; corrections keep using it.",
    )
    settled_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When it was first settled, under its policy or none: later corrections use "
        "that policy, never one assigned since.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["site", "status"], name="outage_site_status"),
            models.Index(fields=["feeder", "status"], name="outage_feeder_status"),
            models.Index(fields=["transformer", "status"], name="outage_transformer_status"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["site", "started_at"],
                condition=Q(kind="site") & ~Q(status="void"),
                name="outage_site_once_per_start",
            ),
            models.UniqueConstraint(
                fields=["feeder", "started_at"],
                condition=Q(kind="feeder") & ~Q(status="void"),
                name="outage_feeder_once_per_start",
            ),
            models.UniqueConstraint(
                fields=["transformer", "started_at"],
                condition=Q(kind="transformer") & ~Q(status="void"),
                name="outage_transformer_once_per_start",
            ),
            models.CheckConstraint(
                condition=~Q(kind="site") | Q(site__isnull=False), name="outage_site_has_site"
            ),
            models.CheckConstraint(
                condition=~Q(kind="feeder") | Q(feeder__isnull=False, site__isnull=True),
                name="outage_feeder_has_feeder",
            ),
            models.CheckConstraint(
                condition=~Q(kind="transformer")
                | Q(transformer__isnull=False, feeder__isnull=True, site__isnull=True),
                name="outage_transformer_has_transformer",
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=models.F("started_at")),
                name="outage_ends_after_start",
            ),
            models.CheckConstraint(
                condition=~Q(status="open") | Q(ended_at__isnull=True),
                name="outage_open_has_no_end",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} outage {self.pk} ({self.status})"

    @property
    def duration(self) -> timedelta | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


class CreditEntry(models.Model):
    """One line of the residents' ledger. Append-only in the database itself (a trigger refuses
    UPDATE and DELETE, migration 0002): a correction is a new entry, its `revision` the next number
    for the same site and reason (an outage, or a demand-response event by id)."""

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="credit_entries")
    amount = models.DecimalField(max_digits=14, decimal_places=credit_rules.MAX_AMOUNT_DIGITS)
    currency = models.CharField(max_length=3, validators=[validate_currency])
    outage = models.ForeignKey(
        Outage, on_delete=models.PROTECT, null=True, blank=True, related_name="credit_entries"
    )
    # An id, not a foreign key: demand_response depends on outages, never the reverse.
    dr_event_id = models.BigIntegerField(null=True, blank=True)
    revision = models.PositiveIntegerField()
    memo = models.CharField(max_length=250, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "credit entries"
        constraints = [
            models.CheckConstraint(
                condition=Q(outage__isnull=False, dr_event_id__isnull=True)
                | Q(outage__isnull=True, dr_event_id__isnull=False),
                name="credit_entry_one_reason",
            ),
            models.UniqueConstraint(
                fields=["outage", "site", "revision"],
                condition=Q(outage__isnull=False),
                name="credit_entry_outage_revision_once",
            ),
            models.UniqueConstraint(
                fields=["dr_event_id", "site", "revision"],
                condition=Q(dr_event_id__isnull=False),
                name="credit_entry_dr_event_revision_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency} to site {self.site_id} ({self.reason})"

    @property
    def reason(self) -> str:
        """`outage:<id>` or `dr_event:<id>`: what the entry pays for."""
        if self.outage_id is not None:
            return f"outage:{self.outage_id}"
        return f"dr_event:{self.dr_event_id}"


class SuspectedStatus(models.TextChoices):
    SUSPECTED = "suspected", "Suspected"
    CONFIRMED = "confirmed", "Confirmed"
    DISMISSED = "dismissed", "Dismissed"


class SuspectedOutage(models.Model):
    """Sites of one feeder whose device sockets all dropped abruptly within the correlation
    window with no `lost` report: perhaps a cut that took the homes' routers down with it
    (`outages.suspected_outages`). Confirmed when replayed reports show site outages starting
    then, dismissed when the devices are back for the grace period and none did."""

    feeder = models.ForeignKey(Feeder, on_delete=models.CASCADE, related_name="suspected_outages")
    started_at = models.DateTimeField(help_text="The first of its sites' drop instants.")
    sites = models.ManyToManyField(Site, through="SuspectedSite", related_name="suspected_outages")
    status = models.CharField(
        max_length=10, choices=SuspectedStatus.choices, default=SuspectedStatus.SUSPECTED
    )
    resolved_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was confirmed or dismissed."
    )
    grid_outage = models.ForeignKey(
        Outage,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="suspicions",
        help_text="The feeder outage it was confirmed as, once one formed.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["feeder", "status"], name="suspected_feeder_status")]
        constraints = [
            models.UniqueConstraint(
                fields=["feeder", "started_at"], name="suspected_outage_once_per_start"
            ),
            models.CheckConstraint(
                condition=Q(status="suspected", resolved_at__isnull=True)
                | (~Q(status="suspected") & Q(resolved_at__isnull=False)),
                name="suspected_outage_resolved_when_not_suspected",
            ),
        ]

    def __str__(self) -> str:
        return f"Suspected outage {self.pk} of feeder {self.feeder_id} ({self.status})"


class SuspectedSite(models.Model):
    """A site of a suspected outage: the instant its last device socket dropped, and the instant
    one came back (kept once seen, so a later drop of the site does not undo it)."""

    suspected_outage = models.ForeignKey(
        SuspectedOutage, on_delete=models.CASCADE, related_name="drops"
    )
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="suspected_drops")
    dropped_at = models.DateTimeField()
    back_at = models.DateTimeField(
        null=True, blank=True, help_text="When a device of the site connected again after it."
    )

    class Meta:
        ordering = ["dropped_at", "site_id"]
        constraints = [
            # One drop of a site belongs to one suspected outage, and a site joins one once.
            models.UniqueConstraint(fields=["site", "dropped_at"], name="suspected_site_drop_once"),
            models.UniqueConstraint(
                fields=["suspected_outage", "site"], name="suspected_site_once_per_outage"
            ),
        ]

    def __str__(self) -> str:
        return f"site {self.site_id} dropped at {self.dropped_at:%Y-%m-%d %H:%M:%S}"
