"""Suspected outages: sites of one feeder whose device sockets all dropped abruptly within the
correlation window, with no report of a cut. Opened once per burst (however often or by how many
workers the sync runs), joined by later drops of the burst, confirmed by replayed `lost` reports
in whatever order they come, dismissed when the devices are back for the grace period without
one; the API and the fleet panel show them to operators only."""

import random
import threading
from datetime import timedelta

import pytest

from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import services as device_services
from devices.models import Feeder, Room, Site
from energy_portal.redis_client import sync_client
from outages import services, tasks
from outages.models import Outage, OutageKind, PowerEvent, SuspectedOutage, SuspectedStatus
from outages.suspected_outages import SiteCut, verdict
from tests.conftest import SENSORS
from tests.outages.conftest import report_cut

API = "/api/v1/outages/suspected/"
WINDOW = timedelta(minutes=2)
GRACE = timedelta(minutes=2)


@pytest.fixture(autouse=True)
def no_sockets_registered():
    """Going offline looks up the socket registry in Redis: none registered here."""
    from devices import socket_registry

    sync_client().delete(socket_registry.SOCKETS_KEY)


@pytest.fixture
def t0():
    """A recent whole second: drops and cuts are minutes after it."""
    return timezone.now().replace(microsecond=0) - timedelta(hours=1)


def minutes(t0, m: float):
    return t0 + timedelta(minutes=m)


def make_site(feeder, n: int):
    site = Site.objects.create(name=f"Home {n}", feeder=feeder, cpe=f"PT9{n:03d}")
    room = Room.objects.create(site=site, name="Hall")
    device, _ = device_services.device_create(uid=f"pi-s{n}", site=site, room=room, sensors=SENSORS)
    device_services.device_set_online(device_id=device.id, online=True, at=site.created_at)
    return device


@pytest.fixture
def pis(feeder):
    """Four sites of feeder FD-1, one online Pi each."""
    return [make_site(feeder, n) for n in range(4)]


def drop(device, at, *, abrupt: bool = True):
    device_services.device_set_online(device_id=device.id, online=False, at=at, abrupt=abrupt)


def back(device, at):
    device_services.device_set_online(device_id=device.id, online=True, at=at)


def sync(feeder, now):
    return services.suspected_outages_sync(feeder_id=feeder.id, now=now)


def lost(device, at, *, restored=None):
    report_cut(device, lost=at, restored=restored)


def shape(feeder):
    return [
        (s.status, s.started_at, sorted((d.site_id, d.dropped_at) for d in s.drops.all()))
        for s in SuspectedOutage.objects.filter(feeder=feeder).order_by("started_at")
    ]


# The pure verdict


def test_verdict_is_confirmed_by_a_cut_starting_within_the_window_whatever_its_order(t0):
    cuts = [
        SiteCut(1, minutes(t0, 40), None, None),  # later cut, another story
        SiteCut(2, minutes(t0, -1), minutes(t0, 30), 7),  # lost 1 min before the drop
        SiteCut(3, minutes(t0, -1.5), None, None),
    ]
    for order in (cuts, cuts[::-1]):
        found = verdict(
            status="suspected",
            resolved_at=None,
            started_at=t0,
            back_at=[None],
            cuts=order,
            window=WINDOW,
            grace=GRACE,
            now=minutes(t0, 5),
        )
        assert (found.status, found.grid_outage) == ("confirmed", 7)


def test_verdict_is_confirmed_by_a_cut_spanning_the_drop_even_if_it_began_long_before(t0):
    found = verdict(
        status="suspected",
        resolved_at=None,
        started_at=t0,
        back_at=[minutes(t0, 1)],
        cuts=[SiteCut(1, minutes(t0, -30), minutes(t0, 10), None)],
        window=WINDOW,
        grace=GRACE,
        now=minutes(t0, 60),
    )
    assert found.status == "confirmed"


def test_verdict_dismisses_only_once_every_site_is_back_for_the_grace_period(t0):
    def status(back_at, now):
        return verdict(
            status="suspected",
            resolved_at=None,
            started_at=t0,
            back_at=back_at,
            cuts=[SiteCut(1, minutes(t0, 10), None, None)],  # too late to confirm
            window=WINDOW,
            grace=GRACE,
            now=now,
        )

    assert status([minutes(t0, 1), None], minutes(t0, 60)).status == "suspected"
    assert status([minutes(t0, 1), minutes(t0, 3)], minutes(t0, 4.9)).status == "suspected"
    dismissed = status([minutes(t0, 3), minutes(t0, 1)], minutes(t0, 5))
    assert (dismissed.status, dismissed.resolved_at) == ("dismissed", minutes(t0, 5))


# Detection


def test_two_sites_dropping_abruptly_within_the_window_open_one_suspected_outage(feeder, pis):
    t0 = timezone.now().replace(microsecond=0) - timedelta(minutes=10)
    drop(pis[0], t0)
    assert sync(feeder, minutes(t0, 0.1)) is False  # one site alone is no outage
    drop(pis[1], minutes(t0, 1.5))

    assert sync(feeder, minutes(t0, 2)) is True

    assert shape(feeder) == [
        ("suspected", t0, sorted([(pis[0].site_id, t0), (pis[1].site_id, minutes(t0, 1.5))]))
    ]
    assert sync(feeder, minutes(t0, 2.5)) is False  # again: nothing more


def test_clean_closes_and_drops_further_apart_than_the_window_open_none(feeder, pis, t0):
    drop(pis[0], t0, abrupt=False)  # the Pi (or the server, shutting down) closed it
    drop(pis[1], minutes(t0, 0.5), abrupt=False)
    drop(pis[2], minutes(t0, 1))
    drop(pis[3], minutes(t0, 3.5))  # 2.5 min after the other abrupt one

    sync(feeder, minutes(t0, 4))

    assert shape(feeder) == []


def test_a_site_still_online_through_another_device_has_not_dropped(feeder, pis, t0):
    second, _ = device_services.device_create(uid="pi-s0-b", site=pis[0].site, sensors=SENSORS)
    back(second, minutes(t0, -5))
    drop(pis[0], t0)
    drop(pis[1], minutes(t0, 0.5))

    sync(feeder, minutes(t0, 1))

    assert shape(feeder) == []


def test_a_site_whose_lost_report_covers_its_drop_is_not_suspected(feeder, pis, t0):
    lost(pis[0], minutes(t0, -1))  # the router on a battery: the report came before the drop
    drop(pis[0], t0)
    drop(pis[1], minutes(t0, 0.5))

    sync(feeder, minutes(t0, 1))

    assert shape(feeder) == []


def test_later_drops_of_the_burst_join_it_and_an_earlier_one_moves_its_start(feeder, pis, t0):
    drop(pis[1], minutes(t0, 1))
    drop(pis[2], minutes(t0, 1.5))
    sync(feeder, minutes(t0, 2))
    # a silent Pi is marked offline late, at its last sign of life: before the others
    drop(pis[0], t0)
    drop(pis[3], minutes(t0, 2.5))  # 2.5 min after the first: a burst of its own

    sync(feeder, minutes(t0, 3))
    sync(feeder, minutes(t0, 3))

    (suspected,) = shape(feeder)
    assert suspected[1] == t0
    assert [site for site, _ in suspected[2]] == sorted(p.site_id for p in pis[:3])


def test_the_same_drops_give_the_same_suspected_outage_whatever_order_they_are_seen_in(
    feeder, pis, t0
):
    instants = [t0, minutes(t0, 0.5), minutes(t0, 1), minutes(t0, 1.75)]
    shapes = []
    for order in ([0, 1, 2, 3], [3, 1, 2, 0]):
        SuspectedOutage.objects.all().delete()
        for device in pis:
            back(device, minutes(t0, -10))
        for n in order:
            drop(pis[n], instants[n])
            sync(feeder, minutes(t0, 2))
        shapes.append(shape(feeder))
    assert shapes[0] == shapes[1]
    assert len(shapes[0]) == 1 and shapes[0][0][1] == t0 and len(shapes[0][0][2]) == 4


@pytest.mark.django_db(transaction=True)
def test_two_workers_syncing_at_once_open_one_suspected_outage(feeder, pis, t0):
    for n, device in enumerate(pis):
        drop(device, minutes(t0, n * 0.25))
    start = threading.Barrier(2)
    failures = []

    def worker():
        try:
            start.wait()
            for _ in range(3):
                sync(feeder, minutes(t0, 1))
        except Exception as exc:  # reported to the test's thread below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    (suspected,) = shape(feeder)
    assert len(suspected[2]) == 4


# Resolution


def test_replayed_lost_reports_confirm_it_and_link_the_feeder_outage(feeder, pis, t0):
    drop(pis[0], t0)
    drop(pis[1], minutes(t0, 0.5))
    sync(feeder, minutes(t0, 1))
    back(pis[0], minutes(t0, 20))
    back(pis[1], minutes(t0, 20))

    # the Pis replay their buffered reports: late, out of order, one of them twice
    lost(pis[1], minutes(t0, -0.25), restored=minutes(t0, 19))
    lost(pis[0], minutes(t0, -0.5), restored=minutes(t0, 19))
    lost(pis[0], minutes(t0, -0.5), restored=minutes(t0, 19))

    suspected = SuspectedOutage.objects.get()
    feeder_outage = Outage.objects.get(kind=OutageKind.FEEDER)
    assert suspected.status == SuspectedStatus.CONFIRMED
    assert suspected.grid_outage == feeder_outage
    assert suspected.resolved_at is not None
    # and the beat's later look changes nothing
    assert sync(feeder, minutes(t0, 40)) is False


def test_devices_back_for_the_grace_period_without_a_report_dismiss_it(feeder, pis, t0, settings):
    settings.OUTAGE_SUSPECTED_GRACE = GRACE
    drop(pis[0], t0)
    drop(pis[1], minutes(t0, 0.5))
    sync(feeder, minutes(t0, 1))
    back(pis[0], minutes(t0, 3))
    back(pis[1], minutes(t0, 4))

    sync(feeder, minutes(t0, 5.9))
    assert SuspectedOutage.objects.get().status == SuspectedStatus.SUSPECTED
    sync(feeder, minutes(t0, 6))
    suspected = SuspectedOutage.objects.get()
    assert (suspected.status, suspected.resolved_at) == ("dismissed", minutes(t0, 6))

    # a site dropping again later does not undo it: it came back at 4
    drop(pis[1], minutes(t0, 30))
    sync(feeder, minutes(t0, 31))
    assert SuspectedOutage.objects.get().status == SuspectedStatus.DISMISSED


def test_a_lost_report_arriving_after_the_dismissal_still_confirms_it(feeder, pis, t0, settings):
    settings.OUTAGE_SUSPECTED_GRACE = GRACE
    drop(pis[0], t0)
    drop(pis[1], minutes(t0, 0.5))
    sync(feeder, minutes(t0, 1))
    back(pis[0], minutes(t0, 3))
    back(pis[1], minutes(t0, 3))
    sync(feeder, minutes(t0, 10))
    assert SuspectedOutage.objects.get().status == SuspectedStatus.DISMISSED

    lost(pis[0], minutes(t0, -0.1), restored=minutes(t0, 2.9))

    assert SuspectedOutage.objects.get().status == SuspectedStatus.CONFIRMED


def test_a_cut_starting_long_after_the_drop_confirms_nothing(feeder, pis, t0):
    drop(pis[0], t0)
    drop(pis[1], minutes(t0, 0.5))
    sync(feeder, minutes(t0, 1))

    lost(pis[2], minutes(t0, 10))

    assert SuspectedOutage.objects.get().status == SuspectedStatus.SUSPECTED


def test_the_sweep_marks_feeders_with_open_suspicions_and_recent_drops_for_one_drain(
    feeder, pis, t0, drains, django_capture_on_commit_callbacks
):
    def sweep():
        with django_capture_on_commit_callbacks(execute=True):  # the task commits at once
            return services.suspected_outages_sweep(now=now)

    # a recent drop: the feeder is marked for the drain of suspected outages, queued once
    now = timezone.now()
    drop(pis[0], now - timedelta(minutes=1))
    assert sweep() == [feeder.id]
    assert (feeders_marked(), len(drains)) == ({feeder.id}, 1)
    # back, and drained: nothing to mark
    back(pis[0], now)
    services.suspected_outages_drain()
    assert sweep() == []
    assert feeders_marked() == set()
    # an open suspicion (to dismiss on time): marked again, one more drain (not a task a
    # feeder: 25 of them after a storm held both worker processes while the sites' drain waited)
    SuspectedOutage.objects.create(feeder=feeder, started_at=t0)
    assert sweep() == [feeder.id]
    assert (feeders_marked(), len(drains)) == ({feeder.id}, 2)


def test_the_sweep_task_dismisses_when_the_grace_has_passed(
    feeder, pis, settings, eager_celery, django_capture_on_commit_callbacks
):
    settings.OUTAGE_SUSPECTED_GRACE = GRACE
    now = timezone.now()
    drop(pis[0], now - timedelta(minutes=10))
    drop(pis[1], now - timedelta(minutes=10))
    sync(feeder, now - timedelta(minutes=9))
    back(pis[0], now - timedelta(minutes=5))
    back(pis[1], now - timedelta(minutes=5))

    with django_capture_on_commit_callbacks(execute=True):  # the task commits at once
        tasks.site_outages_sweep.apply().get()

    assert SuspectedOutage.objects.get().status == SuspectedStatus.DISMISSED


# API and the fleet panel


@pytest.fixture
def suspected(feeder, pis, t0):
    drop(pis[0], t0)
    drop(pis[1], minutes(t0, 0.5))
    sync(feeder, minutes(t0, 1))
    return SuspectedOutage.objects.get()


def test_operators_list_suspected_outages_with_their_sites(
    api_client_for, operator, suspected, pis, t0
):
    response = api_client_for(operator).get(API)

    assert response.status_code == 200
    (row,) = response.json()["results"]
    assert row["id"] == suspected.pk
    assert row["feeder_code"] == "FD-1"
    assert row["status"] == "suspected"
    assert row["sites_count"] == 2
    assert [s["site"] for s in row["sites"]] == [pis[0].site_id, pis[1].site_id]
    assert row["resolved_at"] is None and row["grid_outage"] is None


def test_the_list_filters_by_status_and_refuses_an_unknown_one(api_client_for, operator, suspected):
    client = api_client_for(operator)
    assert client.get(API, {"status": "dismissed"}).json()["results"] == []
    assert len(client.get(API, {"status": "suspected"}).json()["results"]) == 1
    refused = client.get(API, {"status": "maybe"})
    assert refused.status_code == 400 and "status" in refused.json()["errors"]


def test_residents_and_strangers_are_refused(api_client_for, alice, suspected):
    assert api_client_for(alice).get(API).status_code == 403
    assert api_client_for(None).get(API).status_code == 401


def test_the_list_costs_the_same_queries_for_many_suspected_outages(
    api_client_for, operator, feeder, pis, t0
):
    client = api_client_for(operator)
    drop(pis[0], t0)
    drop(pis[1], minutes(t0, 0.5))
    sync(feeder, minutes(t0, 1))
    with CaptureQueriesContext(connection) as one:
        client.get(API)
    for n, device in enumerate(pis):
        back(device, minutes(t0, 5))
        drop(device, minutes(t0, 10 + n * 0.1))
    sync(feeder, minutes(t0, 11))
    with CaptureQueriesContext(connection) as two:
        assert client.get(API).json()["count"] == 2
    assert len(two) == len(one)


def test_the_fleet_panel_shows_suspected_outages_to_operators_only(
    client, operator, alice, suspected
):
    client.force_login(operator)
    page = client.get("/outages/open/").content.decode()
    assert f'data-suspected-outage="{suspected.pk}"' in page
    assert "2 sites" in page
    client.force_login(alice)
    assert client.get("/outages/open/").status_code == 403
    assert "data-suspected-outage" not in client.get("/").content.decode()


def test_the_fleet_panel_says_when_the_cut_that_confirmed_a_suspicion_ended(
    client, operator, feeder, pis
):
    # given the sockets of two sites that dropped, then their replayed reports of the cut
    t0 = timezone.now().replace(microsecond=0) - timedelta(minutes=10)
    drop(pis[0], t0)
    drop(pis[1], minutes(t0, 0.5))
    sync(feeder, minutes(t0, 1))
    lost(pis[0], minutes(t0, -0.1))
    lost(pis[1], minutes(t0, 0.4))
    sync(feeder, minutes(t0, 2))
    [suspected] = SuspectedOutage.objects.filter(feeder=feeder)
    assert suspected.status == "confirmed"
    client.force_login(operator)

    def row():
        page = client.get("/outages/open/").content.decode()
        start = page.index(f'data-suspected-outage="{suspected.pk}"')
        return page[start : page.index("</li>", start)]

    # then the panel shows it confirmed while the cut goes on
    assert "their reports confirm a cut" in row() and "over since" not in row()

    # and, once both sites report their mains back, when the cut it confirmed ended (it is no
    # longer going on, though the suspicion stays listed a while for what became of it)
    lost(pis[0], minutes(t0, -0.1), restored=minutes(t0, 5))
    lost(pis[1], minutes(t0, 0.4), restored=minutes(t0, 5))
    ended = timezone.localtime(minutes(t0, 5)).strftime("%H:%M")
    assert f"their reports confirm a cut, over since {ended}" in row()


def replay(feeder, pis, t0, steps):
    """Start from three online Pis, no reports and no suspicion; apply `steps` in order, the
    feeder synced after each; give back the feeder's suspected outages."""
    SuspectedOutage.objects.all().delete()
    Outage.objects.all().delete()
    PowerEvent.objects.all().delete()
    for device in pis:
        back(device, minutes(t0, -10))
    for kind, n, instant in steps:
        {"drop": drop, "back": back, "lost": lost}[kind](pis[n], instant)
        sync(feeder, minutes(t0, 20))
    return [(s[0], s[1], len(s[2])) for s in shape(feeder)]


DROPS = [("drop", 0, 0), ("drop", 1, 0.4), ("drop", 2, 0.8)]
BACKS = [("back", 0, 9), ("back", 1, 9)]
REPORTS = [("lost", 1, -0.2), ("lost", 1, -0.2), ("lost", 2, -0.1)]  # one replayed twice


def test_reports_replayed_after_the_drops_confirm_it_in_any_order(feeder, pis, t0):
    seen = set()
    for seed in range(4):
        shuffle = random.Random(seed).shuffle
        drops, backs, reports = DROPS[:], BACKS[:], REPORTS[:]
        for part in (drops, backs, reports):
            shuffle(part)
        steps = [(k, n, minutes(t0, m)) for k, n, m in drops + backs + reports]
        seen.add(tuple(replay(feeder, pis, t0, steps)))
    assert seen == {(("confirmed", t0, 3),)}


def test_whatever_order_drops_and_reports_come_in_none_stays_suspected(feeder, pis, t0):
    # A site whose cut was reported before its drop was seen is no suspect (the reports already
    # tell the cut), so the sites counted may differ; the reported cut always confirms the rest.
    for seed in range(4):
        steps = [(k, n, minutes(t0, m)) for k, n, m in DROPS + BACKS + REPORTS]
        random.Random(seed).shuffle(steps)
        steps.sort(key=lambda step: step[0] == "back")  # a Pi comes back after its drop
        assert all(status == "confirmed" for status, _, _ in replay(feeder, pis, t0, steps))


# --- abrupt ends marked for the drain --------------------------------------------------------


def feeders_marked() -> set[int]:
    return {int(f) for f in sync_client().smembers(services.SUSPECTED_DIRTY_KEY)}


@pytest.fixture
def drains(monkeypatch):
    """Drains of suspected outages queued, counted instead of sent to a broker; no feeder's own
    task is queued."""
    queued = []
    monkeypatch.setattr(tasks.suspected_outages_drain, "delay", lambda: queued.append(1))
    monkeypatch.setattr(services, "_suspected_later", lambda feeder_id: pytest.fail("a task"))
    return queued


def test_abrupt_ends_mark_their_feeder_once_for_one_drain_that_opens_its_suspected_outage(
    feeder, pis, drains, django_capture_on_commit_callbacks
):
    now = timezone.now()
    # when: three sites' sockets end abruptly, in three batches as a server's socket ends come
    with django_capture_on_commit_callbacks(execute=True):
        for n, pi in enumerate(pis[:3]):
            device_services.devices_disconnected(
                leaving=[(pi, now - timedelta(seconds=30 - n), True)]
            )

    # then: one drain is queued, the feeder is marked, nothing is suspected yet
    assert len(drains) == 1
    assert feeders_marked() == {feeder.id}
    assert not SuspectedOutage.objects.exists()

    # when: the drain runs
    assert services.suspected_outages_drain() == [feeder.id]

    # then: the feeder's suspected outage is open with the three sites, and nothing is left
    suspected = SuspectedOutage.objects.get()
    assert (suspected.feeder_id, suspected.status) == (feeder.id, SuspectedStatus.SUSPECTED)
    assert suspected.drops.count() == 3
    assert feeders_marked() == set()


def test_clean_ends_mark_no_feeder(feeder, pis, drains, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        device_services.devices_disconnected(
            leaving=[(pi, timezone.now(), False) for pi in pis[:3]]
        )
    assert drains == []
    assert feeders_marked() == set()


@pytest.mark.parametrize(
    ("error", "feeders"),
    [
        # the database away: all three in the one transaction, none halved, all marked again
        (OperationalError("the database went away"), [11, 12, 13]),
        # a lone feeder failing on its own data: marked again
        (ValueError("this feeder's data"), [11]),
    ],
)
def test_a_drain_that_fails_marks_its_feeders_again(db, drains, monkeypatch, error, feeders):
    sync_client().sadd(services.SUSPECTED_DIRTY_KEY, *feeders)
    asked = []

    def sync_fails(feeder_ids, now):
        asked.append(feeder_ids)
        raise error

    monkeypatch.setattr(services, "_suspected_syncs", sync_fails)
    with pytest.raises(type(error)):
        services.suspected_outages_drain()
    assert (asked, feeders_marked()) == ([feeders], set(feeders))


def test_a_feeder_whose_sync_keeps_failing_holds_none_of_the_others_back(
    feeder, pis, drains, django_capture_on_commit_callbacks, monkeypatch
):
    # given: two sites of each of three feeders dropped together, and the second feeder's sync
    # failing on something of its own (not the database's failure)
    two = Feeder.objects.create(code="FD-2", name="Two", transformer=feeder.transformer)
    three = Feeder.objects.create(code="FD-3", name="Three", transformer=feeder.transformer)
    devices = [
        *pis[:2],
        *(make_site(two, n) for n in (10, 11)),
        *(make_site(three, n) for n in (20, 21)),
    ]
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        device_services.devices_disconnected(
            leaving=[(d, now - timedelta(seconds=n), True) for n, d in enumerate(devices)]
        )
    sync_here = services._suspected_sync

    def sync_fails_on_two(feeder_id, now, **kwargs):
        if feeder_id == two.id:
            raise ValueError("feeder two's data")
        return sync_here(feeder_id, now, **kwargs)

    monkeypatch.setattr(services, "_suspected_sync", sync_fails_on_two)

    # when: the drain runs, then again
    for _ in range(2):
        with pytest.raises(ValueError, match="feeder two"):
            services.suspected_outages_drain()

    # then: the other two feeders' suspected outages are open, and only the failing feeder is
    # marked again (the whole drain failing each time would have opened none)
    opened = set(SuspectedOutage.objects.values_list("feeder_id", flat=True))
    assert opened == {feeder.id, three.id}
    assert feeders_marked() == {two.id}

    # when: its data can be taken again
    monkeypatch.setattr(services, "_suspected_sync", sync_here)
    assert services.suspected_outages_drain() == [two.id]

    # then: its suspected outage opens too, and nothing is left marked
    assert SuspectedOutage.objects.filter(feeder=two).count() == 1
    assert feeders_marked() == set()


def test_a_drain_syncs_its_feeders_in_as_many_queries_as_one(
    feeder, pis, t0, drains, django_capture_on_commit_callbacks
):
    # given: two sites of each of two feeders dropped together (nothing suspected yet)
    other = Feeder.objects.create(code="FD-2", name="Two", transformer=feeder.transformer)
    others = [make_site(other, n) for n in (10, 11)]
    now = timezone.now()

    def drops_then_drain(devices):
        with django_capture_on_commit_callbacks(execute=True):
            device_services.devices_disconnected(
                leaving=[(d, now - timedelta(seconds=n), True) for n, d in enumerate(devices)]
            )
        with CaptureQueriesContext(connection) as queries:
            services.suspected_outages_drain()
        return [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]

    # when: the first feeder's drops are drained (its suspected outage opens), then a third
    # site's drop there, then a fourth's there and the second feeder's two at once
    drops_then_drain(pis[:2])
    one = drops_then_drain(pis[2:3])
    both = drops_then_drain(pis[3:] + others)

    # then: each feeder has its suspected outage, and the two feeders were read in as many
    # queries as one (the writes are each suspected outage's own)
    assert SuspectedOutage.objects.filter(feeder__in=[feeder, other]).count() == 2
    assert len(both) == len(one)


def test_a_reconcile_leaves_a_feeder_with_only_drops_to_the_drain_of_suspected_outages(
    feeder, pis, t0, drains, django_capture_on_commit_callbacks, monkeypatch
):
    # given: two sites dropped (nothing suspected yet), and the reconcile's own syncs watched
    inline = []
    sync_here = services._suspected_syncs
    monkeypatch.setattr(
        services, "_suspected_syncs", lambda fs, now: inline.extend(fs) or sync_here(fs, now)
    )
    now = timezone.now()
    drop(pis[0], now - timedelta(minutes=1))
    drop(pis[1], now - timedelta(minutes=1))

    # when: a third site's report is reconciled
    with django_capture_on_commit_callbacks(execute=True):
        lost(pis[2], now - timedelta(minutes=3))

    # then: the feeder is marked for the drain of suspected outages, not synced in the reconcile
    assert inline == []
    assert feeders_marked() == {feeder.id}
    assert len(drains) == 1


def test_a_reconcile_syncs_a_feeder_with_a_suspected_outage_itself(
    feeder, pis, t0, drains, django_capture_on_commit_callbacks
):
    # given: two sites dropped together, their suspected outage open
    drop(pis[0], minutes(t0, 0))
    drop(pis[1], minutes(t0, 0.5))
    sync(feeder, minutes(t0, 1))
    assert SuspectedOutage.objects.get().status == SuspectedStatus.SUSPECTED

    # when: their replayed reports are reconciled
    with django_capture_on_commit_callbacks(execute=True):
        lost(pis[0], minutes(t0, -0.2))
        lost(pis[1], minutes(t0, 0.3))

    # then: the reconcile confirmed it at once, and nothing waits for a drain
    assert SuspectedOutage.objects.get().status == SuspectedStatus.CONFIRMED
    assert feeders_marked() == set()
    assert drains == []
