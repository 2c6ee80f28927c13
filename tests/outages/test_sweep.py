"""The safety-net sweep: a site whose power report's reconcile task was lost (the broker was down
when it was queued) is reconciled by the next beat run, and a reconciled site is left alone."""

from decimal import Decimal

from django.conf import settings

from energy_portal.redis_client import sync_client
from outages import services, tasks
from outages.models import CreditEntry, Outage
from outages.selectors import sites_not_reconciled
from tests.outages.conftest import at


def test_a_site_whose_reconcile_was_lost_is_reconciled_by_the_sweep(
    alice_home, bob_home, ofgem, report, eager_celery
):
    # given reports stored while their reconcile task never ran (the test's transaction never
    # commits, so the on-commit queueing is lost just as with a broker that was down)
    report(alice_home["device"], "lost", 0)
    report(alice_home["device"], "restored", 24 * 60)
    assert not Outage.objects.exists()

    # when the sweep runs
    swept = services.site_outages_sweep()

    # then Alice's site (only hers: Bob has no reports) is reconciled and paid once
    assert swept == [alice_home["site"].id]
    assert list(Outage.objects.values_list("started_at", "ended_at", "status")) == [
        (at(0), at(24 * 60), "ended")
    ]
    assert list(CreditEntry.objects.values_list("amount", "currency")) == [
        (Decimal("140.00"), "GBP")
    ]
    assert services.site_outages_sweep() == []


def test_a_site_reconciled_before_its_newest_report_is_swept_again(
    alice_home, ofgem, report, eager_celery
):
    report(alice_home["device"], "lost", 0)
    services.site_outages_reconcile(site_id=alice_home["site"].id)
    assert sites_not_reconciled() == []

    # a report whose reconcile was lost
    report(alice_home["device"], "restored", 12 * 60)

    assert sites_not_reconciled() == [alice_home["site"].id]
    assert tasks.site_outages_sweep.apply().get() == 1
    assert Outage.objects.get().ended_at == at(12 * 60)
    assert sites_not_reconciled() == []


def test_the_sweep_runs_on_beat_every_minute():
    entry = settings.CELERY_BEAT_SCHEDULE["outages-sweep"]

    assert (entry["task"], entry["schedule"]) == ("outages.tasks.site_outages_sweep", 60.0)


def test_the_sweep_marks_its_sites_for_one_drain_even_behind_a_stale_flag(
    alice_home, bob_home, report, monkeypatch
):
    # given two sites whose reconciles were lost, and a "drain queued" flag left by a lost task
    report(alice_home["device"], "lost", 0)
    report(bob_home["device"], "lost", 1)
    sync_client().set(services.RECONCILE_QUEUED_KEY, 1)
    drains, singles = [], []
    monkeypatch.setattr(tasks.site_outages_drain, "delay", lambda: drains.append(1))
    monkeypatch.setattr(tasks.site_outages_reconcile, "delay", singles.append)

    swept = services.site_outages_sweep()

    # then both are marked and one drain is queued, not a task per site
    marked = {int(s) for s in sync_client().smembers(services.RECONCILE_DIRTY_KEY)}
    assert sorted(swept) == sorted(marked) == sorted([alice_home["site"].id, bob_home["site"].id])
    assert (len(drains), singles) == (1, [])
