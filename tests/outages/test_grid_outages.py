"""Grid outages: the pure grouping (`outages.grid_outages`) and its reconcile with the stored site
outages of a feeder and its transformer (`services.site_outages_reconcile`)."""

import itertools
import threading
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from django.conf import settings as django_settings
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext

from devices import services as device_services
from devices.models import Feeder, Site, Substation, Transformer
from outages import services
from outages.grid_outages import (
    GridOutage,
    Member,
    chain_span,
    grid_outages,
    match_by_members,
    site_customer_minutes,
)
from outages.models import Outage, OutageKind, OutageStatus
from outages.site_outages import PowerReport, site_outage_intervals
from tests.outages.conftest import at

WINDOW = timedelta(minutes=2)


def member(key, site, start, end, momentary=False):
    started, ended = at(start), None if end is None else at(end)
    return Member(
        key=key,
        unit=site,
        started_at=started,
        ended_at=ended,
        momentary=momentary,
        customer_minutes=site_customer_minutes(started, ended, momentary),
    )


# The pure grouping


def test_sites_starting_within_the_window_make_one_outage_with_their_figures():
    found = grid_outages(
        [member(1, "a", 0, 30), member(2, "b", 1.5, 90), member(3, "c", 2, 2.5, momentary=True)],
        window=WINDOW,
        min_units=2,
    )

    # the momentary cut counts among the sites, not in the customer-minutes: 30 + 88.5
    [outage] = found
    assert (outage.started_at, outage.ended_at) == (at(0), at(90))
    assert (outage.sites_affected, outage.customer_minutes) == (3, Decimal("118.500"))
    assert outage.members == (1, 2, 3)
    assert outage.momentary is False


def test_one_site_is_not_a_grid_outage_however_many_of_its_cuts():
    found = grid_outages(
        [member(1, "a", 0, 0.5, momentary=True), member(2, "a", 1, 30)],
        window=WINDOW,
        min_units=2,
    )

    assert found == []


def test_the_least_number_of_sites_is_configurable():
    members = [member(1, "a", 0, 30), member(2, "b", 1, 30)]

    assert len(grid_outages(members, window=WINDOW, min_units=2)) == 1
    assert grid_outages(members, window=WINDOW, min_units=3) == []


def test_groups_are_anchored_at_their_first_start_not_chained():
    # 0 and 1.5 are within 2 minutes; 3 is within 2 minutes of 1.5 but not of 0
    found = grid_outages(
        [
            member(i, site, start, 60)
            for i, (site, start) in enumerate([("a", 0), ("b", 1.5), ("c", 3), ("d", 4.5)])
        ],
        window=WINDOW,
        min_units=2,
    )

    assert [(o.started_at, o.members) for o in found] == [(at(0), (0, 1)), (at(3), (2, 3))]


def test_a_grid_outage_is_open_while_any_member_is():
    found = grid_outages(
        [member(1, "a", 0, 30), member(2, "b", 1, None)], window=WINDOW, min_units=2
    )

    assert found[0].ended_at is None
    assert found[0].customer_minutes == Decimal("30.000")  # the open cut adds once it ends


def test_a_grid_outage_of_momentary_cuts_only_is_momentary():
    found = grid_outages(
        [member(1, "a", 0, 1, momentary=True), member(2, "b", 0.5, 1, momentary=True)],
        window=WINDOW,
        min_units=2,
    )

    assert found[0].momentary is True
    assert found[0].customer_minutes == 0


def test_a_transformer_outage_sums_its_feeder_outages_sites():
    feeders = [
        Member("f1", "F1", at(0), at(30), False, sites_affected=3, customer_minutes=Decimal(90)),
        Member("f2", "F2", at(1), at(60), False, sites_affected=2, customer_minutes=Decimal(100)),
    ]

    [outage] = grid_outages(feeders, window=WINDOW, min_units=2)

    assert (outage.sites_affected, outage.customer_minutes) == (5, Decimal(190))


@given(
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(0, 20), st.integers(0, 10)),
        max_size=12,
        unique_by=lambda m: (m[0], m[1]),
    ),
    st.randoms(use_true_random=False),
)
def test_the_grouping_does_not_depend_on_the_members_order(cuts, rng):
    members = [
        member(i, site, start, start + length, momentary=length < 3)
        for i, (site, start, length) in enumerate(cuts)
    ]
    shuffled = list(members)
    rng.shuffle(shuffled)

    assert grid_outages(shuffled, window=WINDOW, min_units=2) == grid_outages(
        members, window=WINDOW, min_units=2
    )


# Stored grid outages

grid_numbers = itertools.count()


def make_grid(feeders: int, sites_per_feeder: int):
    """A transformer of its own with `feeders` feeders of `sites_per_feeder` sites, one Pi each;
    returns the transformer and the devices, feeder by feeder."""
    n = next(grid_numbers)
    substation = Substation.objects.create(code=f"GS-{n}", name="Grid test")
    transformer = Transformer.objects.create(code=f"GT-{n}", name="T", substation=substation)
    devices = []
    for f in range(feeders):
        feeder = Feeder.objects.create(code=f"GF-{n}-{f}", name="F", transformer=transformer)
        for s in range(sites_per_feeder):
            site = Site.objects.create(name=f"Grid site {n}-{f}-{s}", feeder=feeder)
            devices.append(device_services.device_create(uid=f"grid-{n}-{f}-{s}", site=site)[0])
    return transformer, devices


def record(device, state, minutes):
    services.power_event_record(
        device_id=device.id,
        site_id=device.site_id,
        device_uid=device.uid,
        state=state,
        at=at(minutes),
    )


def reconcile(*devices):
    for site_id in sorted({d.site_id for d in devices}):
        services.site_outages_reconcile(site_id=site_id)


def grid_state(transformer):
    """The grid outages of the transformer, not void, as comparable tuples (ids left out: they
    depend on the order rows were made in)."""
    rows = Outage.objects.filter(
        Q(kind=OutageKind.FEEDER, feeder__transformer=transformer)
        | Q(kind=OutageKind.TRANSFORMER, transformer=transformer)
    ).exclude(status=OutageStatus.VOID)
    state = []
    for outage in rows.order_by("kind", "started_at"):
        members = sorted(
            (m.site.name if m.site_id else m.feeder.code, m.started_at)
            for m in outage.members.exclude(status=OutageStatus.VOID).select_related(
                "site", "feeder"
            )
        )
        state.append(
            (
                outage.kind,
                outage.feeder.code if outage.feeder_id else None,
                outage.started_at,
                outage.ended_at,
                outage.status,
                outage.momentary,
                outage.sites_affected,
                outage.customer_minutes,
                tuple(members),
            )
        )
    return state


def test_three_sites_of_a_feeder_cut_together_make_one_feeder_outage(db):
    _, (a, b, c) = make_grid(1, 3)
    record(a, "lost", 0)
    record(b, "lost", 1)
    record(c, "lost", 1.5)
    reconcile(a, b, c)

    [feeder_outage] = Outage.objects.filter(kind=OutageKind.FEEDER)
    assert (feeder_outage.started_at, feeder_outage.ended_at, feeder_outage.status) == (
        at(0),
        None,
        "open",
    )
    assert feeder_outage.sites_affected == 3
    assert set(
        Outage.objects.filter(kind=OutageKind.SITE).values_list("grid_outage", "sites_affected")
    ) == {(feeder_outage.id, 3)}

    # when they end at 30, 60 and 90 minutes
    record(a, "restored", 30)
    record(b, "restored", 61)
    record(c, "restored", 91.5)
    reconcile(a, b, c)

    feeder_outage.refresh_from_db()
    assert (feeder_outage.ended_at, feeder_outage.status) == (at(91.5), "ended")
    assert feeder_outage.customer_minutes == Decimal("180.000")  # 30 + 60 + 90


def test_a_late_report_that_moves_a_start_out_of_the_window_regroups_the_feeder(db):
    _, (a, b, c) = make_grid(1, 3)
    for device, start in [(a, 0), (b, 1), (c, 10)]:
        record(device, "lost", start)
        record(device, "restored", 60)
    reconcile(a, b, c)
    [first] = Outage.objects.filter(kind=OutageKind.FEEDER)
    assert first.sites_affected == 2  # c started 10 minutes later: a cut of its own

    # a's second device had lost mains long before: a's cut started at -30
    second_device = device_services.device_create(uid=f"late-{a.uid}", site=a.site)[0]
    record(second_device, "lost", -30)
    record(second_device, "restored", 5)
    reconcile(a)

    first.refresh_from_db()
    assert first.status == "void"
    assert not Outage.objects.filter(kind=OutageKind.FEEDER).exclude(status="void").exists()
    assert set(
        Outage.objects.filter(kind=OutageKind.SITE)
        .exclude(status="void")
        .values_list("grid_outage", "sites_affected")
    ) == {(None, 1)}


def test_feeders_of_one_transformer_cut_together_make_a_transformer_outage(db):
    transformer, devices = make_grid(2, 2)
    for minutes, device in zip([0, 0.5, 1, 1.5], devices, strict=True):
        record(device, "lost", minutes)
        record(device, "restored", 60)
    reconcile(*devices)

    [outage] = Outage.objects.filter(kind=OutageKind.TRANSFORMER)
    assert (outage.transformer, outage.started_at, outage.ended_at) == (transformer, at(0), at(60))
    assert (outage.sites_affected, outage.customer_minutes) == (4, Decimal("237.000"))
    assert outage.members.count() == 2
    # a site outage counts the sites of the widest grid outage it is part of
    assert set(Outage.objects.filter(kind=OutageKind.SITE).values_list("sites_affected")) == {(4,)}


# Whatever the arrival order: reports of several sites on two feeders of one transformer,
# delivered shuffled, repeated and in batches (each batch reconciled as the task would), give the
# same grid outages as one batch, and the grid outages the pure functions give for them.

FEEDERS, SITES = 2, 3


@st.composite
def cuts(draw):
    """Reports (site index, state, minute): most sites cut near the same minute (so feeders and
    the transformer go out together), plus stray reports of any kind."""
    reports = []
    for index in range(FEEDERS * SITES):
        if draw(st.booleans()):
            start = draw(st.integers(0, 6))
            reports.append((index, "lost", start))
            length = draw(st.none() | st.integers(0, 20))
            if length is not None:
                reports.append((index, "restored", start + length))
    strays = st.tuples(
        st.integers(0, FEEDERS * SITES - 1),
        st.sampled_from(["lost", "restored"]),
        st.integers(0, 30),
    )
    reports += draw(st.lists(strays, max_size=4))
    return reports


def expected_grid(reports):
    """The grid outages of the reports by the pure functions alone, as `grid_state` gives them."""
    site_members = {f: [] for f in range(FEEDERS)}
    for index in range(FEEDERS * SITES):
        mine = [PowerReport(0, state, at(m)) for i, state, m in reports if i == index]
        for interval in site_outage_intervals(
            mine, momentary_threshold=django_settings.OUTAGE_MOMENTARY_THRESHOLD
        ):
            site_members[index // SITES].append(
                Member(
                    key=(f"site {index}", interval.started_at),
                    unit=index,
                    started_at=interval.started_at,
                    ended_at=interval.ended_at,
                    momentary=interval.momentary,
                    customer_minutes=site_customer_minutes(
                        interval.started_at, interval.ended_at, interval.momentary
                    ),
                )
            )
    feeder_outages = []
    for f, members in site_members.items():
        for found in grid_outages(
            members,
            window=django_settings.OUTAGE_CORRELATION_WINDOW,
            min_units=django_settings.OUTAGE_MIN_GRID_SITES,
        ):
            feeder_outages.append((f, found))
    transformer_outages = grid_outages(
        [
            Member(
                (f"feeder {f}", o.started_at),
                f,
                o.started_at,
                o.ended_at,
                o.momentary,
                o.sites_affected,
                o.customer_minutes,
            )
            for f, o in feeder_outages
        ],
        window=django_settings.OUTAGE_CORRELATION_WINDOW,
        min_units=2,
    )
    return feeder_outages, transformer_outages


def comparable(state, names):
    """`grid_state` with the example's own site and feeder names replaced by their indices."""
    return [
        (
            kind,
            names.get(feeder),
            start,
            end,
            status,
            momentary,
            sites,
            minutes,
            tuple((names[name], s) for name, s in members),
        )
        for kind, feeder, start, end, status, momentary, sites, minutes, members in state
    ]


def names_of(transformer, devices):
    names = {}
    for index, device in enumerate(devices):
        names[device.site.name] = f"site {index}"
        names[device.site.feeder.code] = f"feeder {index // SITES}"
    return names


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cuts(), st.randoms(use_true_random=False), st.integers(1, 5), st.booleans())
def test_grid_outages_do_not_depend_on_arrival_order(db, reports, rng, batch_size, together):
    # given the same reports delivered to two grids: in one batch, and shuffled, repeated and
    # in batches of `batch_size`, each batch's sites reconciled after it, site by site or
    # `together` in one call as a drain does (every feeder of the batch regrouped at once)
    one_batch = make_grid(FEEDERS, SITES)
    for index, state, minutes in reports:
        record(one_batch[1][index], state, minutes)
    reconcile(*one_batch[1])

    batched = make_grid(FEEDERS, SITES)
    deliveries = [*reports, *rng.sample(reports, k=len(reports) // 2)]
    rng.shuffle(deliveries)
    for start in range(0, len(deliveries), batch_size):
        batch = deliveries[start : start + batch_size]
        for index, state, minutes in batch:
            record(batched[1][index], state, minutes)
        devices = [batched[1][index] for index, _, _ in batch]
        if together:
            services.sites_outages_reconcile(site_ids=[d.site_id for d in devices])
        else:
            reconcile(*devices)

    # then both hold the same grid outages
    first = comparable(grid_state(one_batch[0]), names_of(*one_batch))
    second = comparable(grid_state(batched[0]), names_of(*batched))
    assert first == second

    # and they are the ones the pure functions give
    feeder_outages, transformer_outages = expected_grid(reports)
    event(f"{len(feeder_outages)} feeder, {len(transformer_outages)} transformer outages")
    assert len([row for row in first if row[0] == "feeder"]) == len(feeder_outages)
    assert len([row for row in first if row[0] == "transformer"]) == len(transformer_outages)
    assert sorted(
        (f"feeder {f}", o.started_at, o.ended_at, o.sites_affected, o.customer_minutes)
        for f, o in feeder_outages
    ) == sorted(
        (feeder, start, end, sites, minutes)
        for kind, feeder, start, end, _, _, sites, minutes, _ in first
        if kind == "feeder"
    )


@pytest.mark.django_db(transaction=True)
def test_sites_of_one_transformer_reconciled_at_once_by_two_workers_form_one_grid_outage():
    # given the sites of two feeders of one transformer, each cut within the window, their
    # reports recorded and reconciled by two workers at once, site after site
    transformer, devices = make_grid(2, 3)
    shares = [devices[0::2], devices[1::2]]
    start = threading.Barrier(2)
    failures = []

    def worker(share):
        try:
            start.wait()
            for n, device in enumerate(share):
                record(device, "lost", n * 0.25)
                reconcile(device)
                record(device, "restored", 60)
                reconcile(device)
        except Exception as exc:  # reported to the test's thread below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then no worker failed (no deadlock) and the grid holds what one worker would have made
    assert failures == []
    assert [(row[0], row[6], row[7]) for row in grid_state(transformer)] == [
        ("feeder", 3, Decimal("179.750")),  # ends at 60, starts at 0, 0 and 0.25
        ("feeder", 3, Decimal("178.750")),  # starts at 0.25, 0.5 and 0.5
        ("transformer", 6, Decimal("358.500")),
    ]


def statements_of_a_drain(feeders: int) -> int:
    """The statements one reconcile takes for the sites of `feeders` feeders of one transformer,
    two sites each, all cut a minute apart and one of each feeder restored: feeder outages and
    a transformer outage formed, then regrouped as they end."""
    transformer, devices = make_grid(feeders, 2)
    for n, device in enumerate(devices):
        record(device, "lost", n % 2)
    services.sites_outages_reconcile(site_ids=[d.site_id for d in devices])
    for device in devices[::2]:
        record(device, "restored", 30)
    with CaptureQueriesContext(connection) as queries:
        services.sites_outages_reconcile(site_ids=[d.site_id for d in devices])
    feeder_outages = Outage.objects.filter(kind=OutageKind.FEEDER, feeder__transformer=transformer)
    assert [o.sites_affected for o in feeder_outages] == [2] * feeders
    assert Outage.objects.filter(transformer=transformer).count() == 1
    return len(queries)


def test_a_drain_regroups_many_feeders_in_as_many_statements_as_two(db):
    # given sites of 2, then of 5 feeders of a transformer, cut together and reconciled at once
    # when some of them are restored and reconciled at once again
    # then the feeders' and the transformer's grid outages are read and written for all the
    # feeders together: five cost no more statements than two (one per feeder made a storm's
    # drain of 25 feeders cost some 220, bench/outages)
    assert statements_of_a_drain(5) == statements_of_a_drain(2)


# Regrouping near the change only, matching stored grid outages by their members


def test_chain_span_takes_every_start_chained_to_the_change_and_stops_at_a_longer_gap():
    starts = [at(m) for m in (-10, -3, -1.5, 0, 1, 2.5, 9)]

    assert chain_span(starts, at(0), at(0), WINDOW) == (at(-3), at(2.5))
    assert chain_span(starts, at(5), at(5), WINDOW) == (at(5), at(5))  # nothing within 2 min


def test_a_cluster_that_grows_earlier_from_a_late_report_keeps_its_id(db):
    _, (a, b, c) = make_grid(1, 3)
    record(a, "lost", 0)
    record(b, "lost", 1)
    reconcile(a, b)
    [first] = Outage.objects.filter(kind=OutageKind.FEEDER)
    assert first.started_at == at(0)

    # c's report arrives late: c lost mains a minute before anyone else
    record(c, "lost", -1)
    reconcile(c)

    [outage] = Outage.objects.filter(kind=OutageKind.FEEDER)
    assert (outage.id, outage.started_at, outage.sites_affected) == (first.id, at(-1), 3)
    assert set(
        Outage.objects.filter(kind=OutageKind.SITE).values_list("grid_outage", "sites_affected")
    ) == {(first.id, 3)}


def test_a_far_away_outage_on_the_same_feeder_is_not_touched(db):
    _, (a, b, c, d) = make_grid(1, 4)
    record(a, "lost", 0)
    record(b, "lost", 0.5)
    record(a, "restored", 30)
    record(b, "restored", 30)
    reconcile(a, b)
    [old] = Outage.objects.filter(kind=OutageKind.FEEDER)
    old_sites = {o.pk: o.updated_at for o in Outage.objects.filter(kind=OutageKind.SITE)}

    # a day later c and d are cut together
    record(c, "lost", 24 * 60)
    record(d, "lost", 24 * 60 + 1)
    reconcile(c, d)

    old_now = Outage.objects.get(pk=old.pk)
    assert (old_now.updated_at, old_now.sites_affected) == (old.updated_at, 2)
    assert {o.pk: o.updated_at for o in Outage.objects.filter(pk__in=old_sites)} == old_sites
    [new] = Outage.objects.filter(kind=OutageKind.FEEDER, started_at=at(24 * 60))
    assert new.sites_affected == 2


def test_a_reconcile_groups_only_the_outages_near_the_change(db, monkeypatch):
    # given a feeder with many old grid outages, one a day
    _, (a, b) = make_grid(1, 2)
    for day in range(20):
        for device in (a, b):
            record(device, "lost", day * 24 * 60)
            record(device, "restored", day * 24 * 60 + 30)
    reconcile(a, b)
    assert Outage.objects.filter(kind=OutageKind.FEEDER).count() == 20

    # when a new cut of a is reported, then b's, a minute apart
    grouped = []

    def counting(members, **kwargs):
        members = list(members)
        if members:  # (a feeder re-evaluated for suspected outages may group nothing)
            grouped.append(len(members))
        return grid_outages(members, **kwargs)

    monkeypatch.setattr(services, "grid_outages", counting)
    record(a, "lost", 100 * 24 * 60)
    reconcile(a)
    record(b, "lost", 100 * 24 * 60 + 1)
    reconcile(b)

    # then each grouped the new cuts alone, never the 40 old site outages
    assert grouped == [1, 2, 1]  # a's cut; a's and b's; the new feeder outage (transformer)
    assert Outage.objects.filter(kind=OutageKind.FEEDER).exclude(status="void").count() == 21


def test_grid_outages_are_matched_by_the_members_they_share_then_by_time():
    stored = [Row(1, at(0), at(30)), Row(2, at(10), None)]
    derived = [
        grid(at(-1), at(30), members=("x", "y")),  # x and y were in 1
        grid(at(10), None, members=("z",)),  # z was in none: takes 2 by time
        grid(at(50), at(60), members=("w",)),  # overlaps nothing left: new
    ]

    pairs, unmatched = match_by_members(derived, stored, {"x": 1, "y": 1})

    assert [(found.started_at, row and row.pk) for found, row in pairs] == [
        (at(-1), 1),
        (at(10), 2),
        (at(50), None),
    ]
    assert unmatched == []


@dataclass
class Row:
    pk: int
    started_at: object
    ended_at: object


def grid(start, end, members):
    return GridOutage(start, end, False, len(members), Decimal(0), members)
