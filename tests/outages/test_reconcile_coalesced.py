"""Coalesced reconciles: a storm's reports mark their sites in Redis and queue one drain task
while none is queued (`services._reconcile_soon`), and the drain reconciles the marked sites whole
transformers at a time, up to a chunk of sites a transaction (`services.site_outages_drain`,
`services.sites_outages_reconcile`)."""

import threading
from decimal import Decimal

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django.db import OperationalError, connection, transaction

from devices import services as device_services
from devices.models import Site
from energy_portal.redis_client import sync_client
from outages import services, tasks
from outages.models import Outage, OutageKind, OutageStatus
from tests.outages.test_grid_outages import (
    FEEDERS,
    SITES,
    comparable,
    cuts,
    grid_state,
    make_grid,
    names_of,
    reconcile,
    record,
)


@pytest.fixture
def queued(monkeypatch):
    """Count the drains queued instead of sending them to a broker."""
    calls = []
    monkeypatch.setattr(tasks.site_outages_drain, "delay", lambda: calls.append(1))
    return calls


def marked() -> set[int]:
    return {int(s) for s in sync_client().smembers(services.RECONCILE_DIRTY_KEY)}


def site_outages(devices):
    return list(
        Outage.objects.filter(kind=OutageKind.SITE, site__in=[d.site_id for d in devices])
        .exclude(status=OutageStatus.VOID)
        .values_list("site_id", "started_at", "ended_at", "sites_affected")
        .order_by("site_id")
    )


def test_a_storm_of_reports_queues_one_drain_which_reconciles_every_site(
    db, queued, django_capture_on_commit_callbacks
):
    # given six sites of two feeders cut within the window, their reports committed
    transformer, devices = make_grid(2, 3)
    with django_capture_on_commit_callbacks(execute=True):
        for n, device in enumerate(devices):
            record(device, "lost", n * 0.25)

    # then one drain is queued for all of them, and nothing is reconciled yet
    assert len(queued) == 1
    assert marked() == {d.site_id for d in devices}
    assert site_outages(devices) == []

    # when it runs
    results = services.site_outages_drain()

    # then every site has its outage, grouped as single reconciles group them, and none is left
    assert sorted(results) == sorted(d.site_id for d in devices)
    assert [row[3] for row in site_outages(devices)] == [6] * 6
    assert [(row[0], row[6]) for row in grid_state(transformer)] == [
        ("feeder", 3),
        ("feeder", 3),
        ("transformer", 6),
    ]
    assert marked() == set()
    assert not sync_client().exists(services.RECONCILE_QUEUED_KEY)


def test_a_report_arriving_during_a_drain_queues_the_next_one_and_is_not_lost(
    db, queued, monkeypatch, django_capture_on_commit_callbacks
):
    _, devices = make_grid(1, 3)
    first, late = devices[:2], devices[2]
    with django_capture_on_commit_callbacks(execute=True):
        for device in first:
            record(device, "lost", 0)
    assert len(queued) == 1

    # when the third site reports while the drain reconciles the first two
    reconcile_many = services.sites_outages_reconcile

    def with_a_report_meanwhile(*, site_ids):
        with django_capture_on_commit_callbacks(execute=True):
            record(late, "lost", 0.5)
        return reconcile_many(site_ids=site_ids)

    monkeypatch.setattr(services, "sites_outages_reconcile", with_a_report_meanwhile)
    drained = services.site_outages_drain()
    monkeypatch.setattr(services, "sites_outages_reconcile", reconcile_many)

    # then that drain did the first two, and another is queued for the third
    assert sorted(drained) == sorted(d.site_id for d in first)
    assert len(queued) == 2
    assert marked() == {late.site_id}

    # which the next drain reconciles: one feeder outage of the three sites
    assert list(services.site_outages_drain()) == [late.site_id]
    assert [row[3] for row in site_outages(devices)] == [3, 3, 3]


def test_sites_a_failed_drain_did_not_reach_are_marked_again(
    db, queued, monkeypatch, django_capture_on_commit_callbacks
):
    # two transformers, a chunk of one site: two batches, in transformer order
    monkeypatch.setattr(services, "DRAIN_CHUNK_SITES", 1)
    devices = make_grid(1, 1)[1] + make_grid(1, 1)[1]
    with django_capture_on_commit_callbacks(execute=True):
        for device in devices:
            record(device, "lost", 0)
    reconcile_many = services.sites_outages_reconcile
    calls = []

    def second_fails(*, site_ids):
        calls.append(site_ids)
        if len(calls) == 2:
            raise OperationalError("the database went away")
        return reconcile_many(site_ids=site_ids)

    monkeypatch.setattr(services, "sites_outages_reconcile", second_fails)
    with pytest.raises(OperationalError):
        services.site_outages_drain()

    # the first transformer's site was reconciled; the second's is marked for the retry
    assert marked() == {devices[1].site_id}
    assert [row[0] for row in site_outages(devices)] == [devices[0].site_id]


@pytest.fixture
def reconciled(monkeypatch):
    """The site ids of each `sites_outages_reconcile` call (each a transaction), in order."""
    reconcile_many = services.sites_outages_reconcile
    calls = []

    def counted(*, site_ids):
        calls.append(sorted(site_ids))
        return reconcile_many(site_ids=site_ids)

    monkeypatch.setattr(services, "sites_outages_reconcile", counted)
    return calls


def test_a_drain_reconciles_whole_transformers_together_up_to_its_chunk(
    db, queued, monkeypatch, django_capture_on_commit_callbacks, reconciled
):
    # given reports of three transformers: two of two sites, then one of three
    grids = [make_grid(1, 2)[1], make_grid(1, 2)[1], make_grid(1, 3)[1]]
    with django_capture_on_commit_callbacks(execute=True):
        for device in [d for devices in grids for d in devices]:
            record(device, "lost", 0)
    monkeypatch.setattr(services, "DRAIN_CHUNK_SITES", 4)

    # when a drain runs with chunks of four sites
    services.site_outages_drain()

    # then it reconciled the first two transformers' four sites together, and the third's three
    # (seven would pass the chunk; a transformer is never split) in a transaction of their own
    sites = [sorted(d.site_id for d in devices) for devices in grids]
    assert reconciled == [sites[0] + sites[1], sites[2]]

    # and with room for all, in one transaction
    reconciled.clear()
    monkeypatch.setattr(services, "DRAIN_CHUNK_SITES", 1000)
    with django_capture_on_commit_callbacks(execute=True):
        for device in [d for devices in grids for d in devices]:
            record(device, "restored", 30)
    services.site_outages_drain()
    assert reconciled == [sorted(site for ids in sites for site in ids)]


def test_a_drain_splits_sites_on_no_feeder_freely_by_its_chunk(
    db, queued, monkeypatch, django_capture_on_commit_callbacks, reconciled
):
    # given reports of three sites on no feeder (no grid: nothing ties them together)
    devices = [
        device_services.device_create(
            uid=f"pi-alone-{n}", site=Site.objects.create(name=f"Alone {n}")
        )[0]
        for n in range(3)
    ]
    with django_capture_on_commit_callbacks(execute=True):
        for device in devices:
            record(device, "lost", 0)
    monkeypatch.setattr(services, "DRAIN_CHUNK_SITES", 2)

    # when a drain runs with chunks of two sites
    services.site_outages_drain()

    # then they were reconciled two, then one, each site's outage made
    sites = sorted(d.site_id for d in devices)
    assert reconciled == [sites[:2], sites[2:]]
    assert Outage.objects.filter(site_id__in=sites, kind=OutageKind.SITE).count() == 3


def test_a_site_whose_reconcile_keeps_failing_holds_none_of_the_others_back(
    db, queued, monkeypatch, django_capture_on_commit_callbacks, reconciled
):
    # given reports of two transformers' sites (one chunk), the third site's reconcile failing
    # on something of its own (not the database's failure), whatever sites it comes with
    devices = make_grid(1, 3)[1] + make_grid(1, 2)[1]
    with django_capture_on_commit_callbacks(execute=True):
        for device in devices:
            record(device, "lost", 0)
    bad = devices[2].site_id
    reconcile_counted = services.sites_outages_reconcile

    def fails_with_the_bad_site(*, site_ids):
        with transaction.atomic():  # its writes roll back with the raise
            results = reconcile_counted(site_ids=site_ids)
            if bad in site_ids:
                raise ValueError("the bad site's data")
        return results

    monkeypatch.setattr(services, "sites_outages_reconcile", fails_with_the_bad_site)

    # when the drain runs, then again
    for _ in range(2):
        with pytest.raises(ValueError, match="bad site"):
            services.site_outages_drain()
        # then every other site has its outage, and only the bad one is marked again
        assert marked() == {bad}
        assert {row[0] for row in site_outages(devices)} == {d.site_id for d in devices} - {bad}

    # the chunk was halved down to the bad site: five sites, [0, 1] [2, 3, 4] then [2] [3, 4]
    sites = [d.site_id for d in devices]
    assert reconciled[:5] == [sorted(sites), sites[:2], sites[2:], [bad], sites[3:]]

    # when its data can be taken again, the next drain reconciles it
    monkeypatch.setattr(services, "sites_outages_reconcile", reconcile_counted)
    assert list(services.site_outages_drain()) == [bad]
    assert marked() == set()
    assert len(site_outages(devices)) == 5


def reported(devices, capture_on_commit):
    """The devices, each having reported `lost` (its site marked for the drain)."""
    with capture_on_commit(execute=True):
        for device in devices:
            record(device, "lost", 0)
    return devices


@pytest.fixture
def reconciles_fail(monkeypatch, reconciled):
    """`reconciles_fail(error)`: every reconcile from then on is counted in `reconciled`, then
    raises `error`."""
    counted = services.sites_outages_reconcile

    def fail_with(error: BaseException) -> None:
        def failing(*, site_ids):
            counted(site_ids=site_ids)
            raise error

        monkeypatch.setattr(services, "sites_outages_reconcile", failing)

    return fail_with


def test_two_sites_whose_reconciles_keep_failing_hold_none_of_the_others_back(
    db, queued, monkeypatch, django_capture_on_commit_callbacks, reconciled
):
    # given: forty sites' reports (one chunk), the 4th's and the 31st's reconciles failing (in
    # either half), whatever sites they come with
    devices = reported(make_grid(4, 10)[1], django_capture_on_commit_callbacks)
    sites = sorted(d.site_id for d in devices)
    bad = {sites[3], sites[30]}
    counted = services.sites_outages_reconcile

    def fails_with_a_bad_site(*, site_ids):
        with transaction.atomic():  # its writes roll back with the raise
            results = counted(site_ids=site_ids)
            if bad & set(site_ids):
                raise ValueError("a bad site's data")
        return results

    monkeypatch.setattr(services, "sites_outages_reconcile", fails_with_a_bad_site)

    # when: the drain runs
    with pytest.raises(ValueError, match="bad site"):
        services.site_outages_drain()

    # then: every other site has its outage, and only the two are marked again
    assert marked() == bad
    assert {row[0] for row in site_outages(devices)} == set(sites) - bad


def test_a_failure_of_every_site_is_not_retried_site_by_site(
    db, queued, django_capture_on_commit_callbacks, reconciled, reconciles_fail
):
    # given: forty sites' reports, and every reconcile failing (a defect, not one site's data)
    devices = reported(make_grid(4, 10)[1], django_capture_on_commit_callbacks)
    reconciles_fail(ValueError("a defect"))

    # when: the drain runs
    with pytest.raises(ValueError, match="a defect"):
        services.site_outages_drain()

    # then: the chunk and, within the halving's budget (four runs a level of forty sites'
    # six, and four), parts of it were tried: not each of the 79 parts down to every site;
    # every site is marked again
    assert len(reconciled) <= 1 + 4 * 6 + 4
    assert marked() == {d.site_id for d in devices}


def test_a_drain_out_of_time_stops_at_once_with_every_site_marked_again(
    db, queued, monkeypatch, django_capture_on_commit_callbacks, reconciled, reconciles_fail
):
    # given: two transformers' reports (two chunks), the first chunk running out of time
    monkeypatch.setattr(services, "DRAIN_CHUNK_SITES", 2)
    devices = make_grid(1, 2)[1] + make_grid(1, 2)[1]
    reported(devices, django_capture_on_commit_callbacks)
    reconciles_fail(SoftTimeLimitExceeded())

    # when: the drain runs
    with pytest.raises(SoftTimeLimitExceeded):
        services.site_outages_drain()

    # then: nothing was halved or tried after it, and all four sites wait for the next drain
    assert len(reconciled) == 1
    assert marked() == {d.site_id for d in devices}


def test_a_site_deleted_after_its_report_is_skipped_not_retried_forever(db, queued):
    _, devices = make_grid(1, 2)
    record(devices[0], "lost", 0)
    record(devices[1], "lost", 0)
    sync_client().sadd(services.RECONCILE_DIRTY_KEY, devices[0].site_id, devices[1].site_id)
    gone = devices[1].site_id
    devices[1].site.delete()

    assert list(services.site_outages_drain()) == [devices[0].site_id]
    assert marked() == set()
    assert not Outage.objects.filter(site_id=gone).exists()


@pytest.mark.django_db(transaction=True)
def test_two_drains_at_once_give_what_single_reconciles_give(queued):
    # given two grids with the same cuts: one reconciled site by site
    single = make_grid(2, 3)
    for n, device in enumerate(single[1]):
        record(device, "lost", n * 0.25)
        reconcile(device)
        record(device, "restored", 60)
        reconcile(device)

    # and one whose sites two workers drain at once, reports recorded meanwhile
    drained = make_grid(2, 3)
    client = sync_client()
    client.delete(services.RECONCILE_DIRTY_KEY)  # the first grid's reports marked its sites
    start = threading.Barrier(2)
    failures = []

    def worker(share):
        try:
            start.wait()
            for n, device in share:
                record(device, "lost", n * 0.25)
                record(device, "restored", 60)  # each marks the site, once committed
                services.site_outages_drain()
        except Exception as exc:  # reported to the test's thread below
            failures.append(exc)
        finally:
            connection.close()

    indexed = list(enumerate(drained[1]))
    threads = [threading.Thread(target=worker, args=(s,)) for s in (indexed[0::2], indexed[1::2])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then no drain failed (no deadlock), none is left marked, and the grids are the same
    assert failures == []
    assert marked() == set()
    assert comparable(grid_state(drained[0]), names_of(*drained)) == comparable(
        grid_state(single[0]), names_of(*single)
    )
    assert [(row[0], row[6], row[7]) for row in grid_state(drained[0])] == [
        ("feeder", 3, Decimal("179.250")),  # ends at 60, starts at 0, 0.25 and 0.5
        ("feeder", 3, Decimal("177.000")),  # starts at 0.75, 1 and 1.25
        ("transformer", 6, Decimal("356.250")),
    ]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cuts(), st.randoms(use_true_random=False), st.integers(1, FEEDERS * SITES))
def test_sites_reconciled_together_match_sites_reconciled_one_by_one(db, reports, rng, group):
    # given the same reports on two grids: reconciled site by site, and in groups of sites
    alone, together = make_grid(FEEDERS, SITES), make_grid(FEEDERS, SITES)
    for index, state, minutes in reports:
        record(alone[1][index], state, minutes)
        record(together[1][index], state, minutes)
    reconcile(*alone[1])
    sites = [d.site_id for d in together[1]]
    rng.shuffle(sites)
    for start in range(0, len(sites), group):
        services.sites_outages_reconcile(site_ids=sites[start : start + group])

    # then both hold the same grid outages, and every site outage the same sites affected
    assert comparable(grid_state(together[0]), names_of(*together)) == comparable(
        grid_state(alone[0]), names_of(*alone)
    )
    assert [row[1:] for row in site_outages(together[1])] == [
        row[1:] for row in site_outages(alone[1])
    ]


class DrainLockHeld:
    """The drain lock held by another session (a drain running in another worker)."""

    def __init__(self):
        from django.db import connections

        self.connection = connections.create_connection("default")
        self.cursor = self.connection.cursor()
        self.cursor.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", [services._DRAIN_LOCK]
        )

    def release(self):
        self.cursor.execute(
            "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [services._DRAIN_LOCK]
        )
        self.connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_drain_queued_while_another_runs_waits_and_takes_the_sites_marked_meanwhile(queued):
    sync_client().delete(services.RECONCILE_DIRTY_KEY)
    _, devices = make_grid(1, 3)
    first, late = devices[:2], devices[2]
    for device in first:
        record(device, "lost", 0)  # marks the site once committed
    running = DrainLockHeld()
    drained, failures = [], []

    def worker():
        try:
            drained.append(services.site_outages_drain())
        except Exception as exc:  # reported to the test's thread below
            failures.append(exc)
        finally:
            connection.close()

    # when a drain starts while another holds the lock, and a third site reports meanwhile
    waiting = threading.Thread(target=worker)
    waiting.start()
    waiting.join(timeout=0.5)
    assert waiting.is_alive(), "the drain did not wait for the running one"
    assert marked() == {d.site_id for d in first}  # nothing taken while it waits
    record(late, "lost", 0.5)
    running.release()
    waiting.join(timeout=30)

    # then it took all three sites at once: one feeder outage of three
    assert failures == []
    assert sorted(drained[0]) == sorted(d.site_id for d in devices)
    assert marked() == set()
    assert [row[3] for row in site_outages(devices)] == [3, 3, 3]


@pytest.mark.django_db(transaction=True)
def test_a_drain_that_waits_too_long_leaves_its_sites_marked_for_the_next(
    queued, monkeypatch, caplog
):
    sync_client().delete(services.RECONCILE_DIRTY_KEY)
    _, devices = make_grid(1, 2)
    for device in devices:
        record(device, "lost", 0)
    monkeypatch.setattr(services, "DRAIN_WAIT_S", 1)
    running = DrainLockHeld()
    try:
        assert services.site_outages_drain() == {}
    finally:
        running.release()

    assert marked() == {d.site_id for d in devices}
    assert site_outages(devices) == []
    assert "a drain has run for over 1 s" in caplog.text
    # and the next drain, the lock free, reconciles them
    assert sorted(services.site_outages_drain()) == sorted(d.site_id for d in devices)
