"""Exactly once: however the reports of a site's devices arrive (repeated, reordered, split
across reconnects, handled by two workers at once), each true outage's ledger entries sum to the
policy's credit for its true duration, and an outage that turned out not to be one sums to 0.

Hypothesis draws the reports; PostgreSQL is the real one. Each example uses a site of its own, so
examples never see each other's rows (the ledger cannot be emptied between them).
"""

import itertools
import threading
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from django.conf import settings as django_settings
from django.db import connection

from devices import services as device_services
from devices.models import Site
from outages import services
from outages.credit_rules import credit_for
from outages.models import CreditEntry, CreditPolicy, Outage, OutageStatus
from outages.site_outages import PowerReport, site_outage_intervals
from tests.outages.conftest import at

DEVICES = 3
# Minutes, not hours, so random cuts cross the threshold, both tiers and the cap.
POLICY = {
    "name": "Minutes",
    "currency": "GBP",
    "threshold": timedelta(minutes=10),
    "base_amount": Decimal("5.00"),
    "tiers": [
        {"after": "PT10M", "period": "PT7M", "amount": "1.25"},
        {"after": "PT1H", "period": "PT5M", "amount": "2.00"},
    ],
    "count_started_periods": False,
    "cap": Decimal("40.00"),
    "is_default": True,
}
# About 0.1 s an example here; these counts keep each test to a few seconds and still meet an
# outage voided after it was paid in about one example in ten.
EXAMPLE_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

site_numbers = itertools.count()


def make_site():
    """A fresh site with DEVICES Pis; returns the site and its devices."""
    n = next(site_numbers)
    site = Site.objects.create(name=f"Property site {n}")
    devices = [
        device_services.device_create(uid=f"prop-{n}-{d}", site=site)[0] for d in range(DEVICES)
    ]
    return site, devices


# A report: (device index, state, minute). Minutes on a coarse grid make ties between devices
# and exact-threshold cuts likely.
reports = st.lists(
    st.tuples(
        st.integers(0, DEVICES - 1),
        st.sampled_from(["lost", "restored"]),
        st.integers(0, 200).map(lambda m: m - m % 2),
    ),
    min_size=1,
    max_size=20,
)


@st.composite
def deliveries(draw):
    """The reports, as the portal receives them: some resent, in batches, and in one of three
    orders: any, device by device (each Pi replays its buffer after reconnecting, so a device's
    earlier cut may come after another's whole cut was paid), or newest first."""
    sent = draw(reports)
    resent = draw(st.lists(st.sampled_from(sent), max_size=8))
    arriving = draw(st.permutations(sent + resent))
    order = draw(st.sampled_from(["any", "device by device", "newest first"]))
    if order == "device by device":
        rank = draw(st.permutations(range(DEVICES)))
        arriving.sort(key=lambda r: rank[r[0]])
    elif order == "newest first":
        arriving.sort(key=lambda r: -r[2])
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(arriving) - 1)), max_size=8)))
    batches = [arriving[a:b] for a, b in itertools.pairwise([0, *cuts, len(arriving)])]
    return sent, [b for b in batches if b]


def record(device, state, minute):
    services.power_event_record(
        device_id=device.id,
        site_id=device.site_id,
        device_uid=device.uid,
        state=state,
        at=at(minute),
    )


def assert_paid_exactly_once(site, devices, sent, policy):
    """Compare the stored outages and ledger with the outages the full set of reports defines."""
    true = site_outage_intervals(
        [PowerReport(devices[d].id, state, at(minute)) for d, state, minute in sent],
        momentary_threshold=django_settings.OUTAGE_MOMENTARY_THRESHOLD,
    )
    paid = defaultdict(lambda: defaultdict(Decimal))
    revisions = defaultdict(list)
    for entry in CreditEntry.objects.filter(site=site):
        paid[entry.outage_id][entry.currency] += entry.amount
        revisions[entry.outage_id].append(entry.revision)
    stored = {o.started_at: o for o in Outage.objects.filter(site=site)}

    for interval in true:
        outage = stored.pop(interval.started_at)
        assert (outage.ended_at, outage.momentary) == (interval.ended_at, interval.momentary)
        if interval.ended_at is None:
            assert outage.status == OutageStatus.OPEN
            continue
        assert outage.status == OutageStatus.ENDED
        owed = Decimal(0) if interval.momentary else credit_for(policy, interval.duration)
        assert paid[outage.id]["GBP"] == owed, f"{interval} paid {dict(paid[outage.id])}"
    event(f"outages voided after being paid: {sum(1 for o in stored.values() if revisions[o.id])}")
    for outage in stored.values():  # derived once, not any more
        assert outage.status == OutageStatus.VOID
        assert all(total == 0 for total in paid[outage.id].values())
    for numbers in revisions.values():  # each step written once, none skipped
        assert sorted(numbers) == list(range(1, len(numbers) + 1))


@pytest.mark.django_db
@EXAMPLE_SETTINGS
@given(delivery=deliveries())
def test_batches_replayed_in_any_order_pay_each_true_outage_exactly_once(delivery):
    policy = CreditPolicy.objects.update_or_create(name=POLICY["name"], defaults=POLICY)[0]
    site, devices = make_site()
    sent, batches = delivery

    # each batch arrives over one connection, and the site is reconciled after it
    for batch in batches:
        for d, state, minute in batch:
            record(devices[d], state, minute)
        services.site_outages_reconcile(site_id=site.id)

    assert_paid_exactly_once(site, devices, sent, policy)


@pytest.mark.django_db(transaction=True)
@settings(EXAMPLE_SETTINGS, max_examples=20)
@given(delivery=deliveries())
def test_two_workers_at_once_pay_each_true_outage_exactly_once(delivery, eager_celery):
    policy = CreditPolicy.objects.update_or_create(name=POLICY["name"], defaults=POLICY)[0]
    site, devices = make_site()
    sent, batches = delivery
    # the batches are shared out between two workers; each new report committed queues a
    # reconcile (Celery runs it in the worker that recorded the report)
    shares = [batches[0::2], batches[1::2]]
    start = threading.Barrier(2)
    failures = []

    def worker(share):
        try:
            start.wait()
            for batch in share:
                for d, state, minute in batch:
                    record(devices[d], state, minute)
                services.site_outages_reconcile(site_id=site.id)
        except Exception as exc:  # reported to the test's thread below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert_paid_exactly_once(site, devices, sent, policy)
