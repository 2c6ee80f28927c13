"""Writes for mains power reports, site outages, credit policies and the credit ledger."""

import logging
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import Max, Sum
from django.utils import timezone

from devices import selectors as registry
from devices.groups import fleet_group, site_group
from energy_portal.realtime import group_send, live_event, live_send_each
from energy_portal.redis_client import sync_client
from outages import selectors
from outages.credit_rules import credit_for, duration_iso
from outages.grid_outages import (
    MIN_TRANSFORMER_FEEDERS,
    Member,
    chain_span,
    grid_outages,
    match_by_members,
    site_customer_minutes,
)
from outages.models import (
    CreditEntry,
    CreditPolicy,
    Outage,
    OutageKind,
    OutageStatus,
    PowerEvent,
    PowerState,
    SitePolicy,
    SiteReconcile,
    SuspectedOutage,
    SuspectedSite,
    SuspectedStatus,
)
from outages.site_outages import PowerReport, match_by_overlap, site_outage_intervals
from outages.suspected_outages import SiteCut, cut_spans, verdict

logger = logging.getLogger(__name__)


def power_event_message(*, site_id: int, device_uid: str, state: str, at: datetime) -> dict:
    """The live message telling a site's viewers (and the fleet) of a device's power report."""
    payload = {"type": "power", "device": device_uid, "site": site_id, "state": state}
    return live_event({**payload, "ts": at.isoformat()})


def power_event_record(
    *,
    device_id: int,
    site_id: int,
    device_uid: str,
    state: str,
    at: datetime,
    announced: bool = False,
):
    """Store a mains lost/restored report once; a repeat of the same report changes nothing.

    Returns the event and whether it was new. Viewers of the site hear of new events after commit
    (unless the caller `announced` it already: the device socket tells them before storing it,
    see `devices.consumers.DeviceConsumer._power`), and the site's outages are reconciled (a
    Celery task) with the new event in.
    """
    if state not in PowerState.values:
        raise ValueError("state must be 'lost' or 'restored'")
    try:
        with transaction.atomic():
            event = PowerEvent.objects.create(
                device_id=device_id, site_id=site_id, state=state, at=at
            )
    except IntegrityError:
        return PowerEvent.objects.get(device_id=device_id, state=state, at=at), False
    if not announced:
        message = power_event_message(site_id=site_id, device_uid=device_uid, state=state, at=at)
        transaction.on_commit(lambda: group_send([site_group(site_id), fleet_group()], message))
    # Robust: the report is stored and acked even if the broker is down; the site's next report
    # reconciles everything it missed, since a reconcile always starts from all the events.
    transaction.on_commit(lambda: _reconcile_soon(site_id), robust=True)
    return event, True


def power_events_record(*, reports: list[tuple[int, int, str, datetime]]) -> list:
    """`power_event_record` of many reports (device id, site id, state, instant), announced by
    their sockets, as one server process's sockets make them together (`devices.batched`): one
    insert for all (a repeat changes nothing) and their sites marked for the next drain in one
    Redis round trip after commit. Should the insert fail (a device deleted meanwhile), each
    report is stored alone; the answer per report is None, or the error that kept it out."""
    for _, _, state, _ in reports:
        if state not in PowerState.values:
            raise ValueError("state must be 'lost' or 'restored'")
    try:
        with transaction.atomic():
            PowerEvent.objects.bulk_create(
                [
                    PowerEvent(device_id=device_id, site_id=site_id, state=state, at=at)
                    for device_id, site_id, state, at in reports
                ],
                ignore_conflicts=True,
            )
    except IntegrityError:
        answers: list = []
        for device_id, site_id, state, at in reports:
            try:
                power_event_record(
                    device_id=device_id,
                    site_id=site_id,
                    device_uid="",
                    state=state,
                    at=at,
                    announced=True,
                )
            except Exception as exc:
                answers.append(exc)
            else:
                answers.append(None)
        return answers
    # Every site of the batch, repeats too: a reconcile that finds nothing new changes nothing.
    sites = sorted({site_id for _, site_id, _, _ in reports})
    transaction.on_commit(partial(_reconcile_soon_many, sites), robust=True)
    return [None] * len(reports)


# Reconciles are coalesced: a report adds its site to a Redis set of sites to reconcile and
# queues one drain task only when none is queued yet (the flag, SET NX with a TTL so that a
# lost task never blocks the next ones for long). The drain clears the flag before it takes the
# set, so a report arriving while it runs queues the next drain: none is left unreconciled.
RECONCILE_DIRTY_KEY = "ep:outages:reconcile:sites"
RECONCILE_QUEUED_KEY = "ep:outages:reconcile:queued"
RECONCILE_QUEUED_TTL_S = 30
# Feeders whose suspected outages a socket's abrupt end may change (`sockets_drop_record`),
# synced by a drain of their own (`suspected_outages_drain`), coalesced the same way.
SUSPECTED_DIRTY_KEY = "ep:outages:suspected:feeders"
SUSPECTED_QUEUED_KEY = "ep:outages:suspected:queued"


def _reconcile_soon(site_id: int) -> None:
    """Have the site reconciled by the next drain (`site_outages_drain`), queuing it if none is
    queued. With Redis unreachable, the site's own reconcile task is queued instead (and the
    beat's sweep is the net under both)."""
    _reconcile_soon_many([site_id])


def _reconcile_soon_many(site_ids: list[int]) -> None:
    """`_reconcile_soon` of many sites in one Redis round trip."""
    _drain_soon(
        RECONCILE_DIRTY_KEY, site_ids, flag=RECONCILE_QUEUED_KEY, task="site_outages_drain",
        alone=_reconcile_later,
    )  # fmt: skip


def _drain_soon(
    key: str, ids: list[int], *, flag: str, task: str, alone: Callable[[int], None]
) -> None:
    """Add `ids` to the set `key` a drain takes, and queue that drain (the `task` of
    outages.tasks) unless `flag` says one is queued, in one Redis round trip; with Redis
    unreachable, `alone(id)` queues each one's own task."""
    try:
        with sync_client().pipeline(transaction=False) as pipe:
            pipe.sadd(key, *ids)
            pipe.set(flag, 1, nx=True, ex=RECONCILE_QUEUED_TTL_S)
            queued = pipe.execute()[1]
    except RedisError:
        for one in ids:
            alone(one)
        return
    if queued:
        _drain_queue(task, flag=flag)


def _drain_queue(task: str, *, flag: str) -> None:
    from outages import tasks  # tasks import this module

    try:
        getattr(tasks, task).delay()
    except Exception:
        # Not queued after all: the next mark (or the sweep) must be able to queue one.
        sync_client().delete(flag)
        raise


def _reconcile_later(site_id: int) -> None:
    # Imported here: tasks import this module.
    from outages.tasks import site_outages_reconcile as task

    task.delay(site_id)


def _lock(name: str) -> None:
    """Serialize the work on one site's (feeder's, transformer's) outages until the transaction
    ends, so two workers on the same one run one after the other and reach the same result. An
    advisory lock, not a row lock, so editing the registry never waits on it (and devices' tables
    are left to devices). Always taken in the order site, feeder, transformer: no deadlock."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [name])


def _site_lock(site_id: int) -> None:
    _lock(f"outages.site:{site_id}")


@dataclass
class ReconcileResult:
    created: int = 0
    updated: int = 0
    voided: int = 0
    entries: list[CreditEntry] = field(default_factory=list)


def site_outages_reconcile(*, site_id: int) -> ReconcileResult:
    """Bring the site's stored outages, its feeder's grid outages and the site's credits in line
    with all its power events.

    The outages are derived afresh from every event the site has (`site_outage_intervals`) and
    matched to the stored live ones by overlap (`match_by_overlap`): a derived outage takes the
    stored one it covers most and moves its start and end there, so a late report with an
    earlier instant keeps the cut's id (and the policy it was first paid by) and pays it once,
    with no void-and-repay churn, and a cut split by late reports keeps its id on the piece
    holding most of it. A derived outage starting exactly where a void one did takes that row
    back (a merge undone), unless that would give up a live row; one overlapping none is new; a
    stored one no derived outage took (no cut after all, or merged into another) becomes void.

    The grid outages of the site's feeder (and its transformer) are then derived afresh from
    their site outages (`_grids_sync`), which tells each site outage how many sites
    its grid outage affected.

    Every ended or void outage of the site is then settled in the same transaction: its ledger
    entries must sum to its target, and a difference is paid (or taken back) by one new entry.
    The target is 0 for a void or momentary outage, without a policy, or when the policy's least
    number of sites affected is more than the outage's grid outage affected; otherwise the credit
    of its policy for its duration. An outage keeps the policy (or the lack of one) it was first
    settled under, so assigning a policy later never pays old cuts when some new report happens
    to arrive. An open outage is not settled: what an earlier end paid stays paid until the
    outage ends again, and is then corrected either way (late reports may lengthen or shorten a
    cut). Other sites whose settlement depends on a grid outage that changed size are
    reconciled again after commit.

    Runs under the site's lock, then its feeder's and its transformer's (all taken before any
    write), so concurrent calls give the same result as one; reconciles of sites under one
    transformer run one after the other.
    """
    return sites_outages_reconcile(site_ids=[site_id])[site_id]


def sites_outages_reconcile(*, site_ids) -> dict[int, ReconcileResult]:
    """`site_outages_reconcile` of many sites in one transaction (what a storm's drain does),
    set-based: every site's events, stored outages and ledger totals are read in one query each
    and its outages written in a few statements for all the sites (`_sites_outages_sync`,
    `_sites_outages_settle`); each feeder touched is regrouped once, from the starts every one
    of its sites moved, instead of once per site. The sites' outages are still derived each
    as alone (the same pure functions), so the result is the one of single reconciles. Same
    locks, taken in one total order (the sites by id, then their feeders, then their
    transformers; one statement per kind), so it runs alongside single reconciles and other
    batches without deadlock and with the same result."""
    site_ids = sorted(set(site_ids))
    results: dict[int, ReconcileResult] = {}
    if not site_ids:
        return results
    with transaction.atomic():
        _locks("outages.site:", site_ids)
        grids = {
            site_id: grid
            for site_id, grid in selectors.sites_grid(site_ids).items()
            if grid is not None
        }
        # Taken before any row is written: the grid sync writes other sites' (and feeders')
        # outage rows, so a reconcile holding its site's rows while it waited for the
        # feeder would deadlock with one holding the feeder and writing those rows.
        _locks("outages.feeder:", sorted({grid[0] for grid in grids.values()}))
        _locks("outages.transformer:", sorted({grid[1] for grid in grids.values()}))
        synced = _sites_outages_sync(site_ids)
        to_settle: dict[int, list[Outage]] = {}
        moved_on: dict[tuple[int, int], set[datetime]] = defaultdict(set)
        for site_id in site_ids:
            results[site_id], to_settle[site_id], moved = synced[site_id]
            if site_id in grids:
                moved_on[grids[site_id]].update(moved)
        regrouped = _grids_sync(moved_on)
        sites_affected = regrouped.sites_affected
        others = sorted(regrouped.sites_to_resettle - set(site_ids))
        if others:
            transaction.on_commit(partial(_reconcile_soon_many, others), robust=True)
        for outages in to_settle.values():
            for outage in outages:
                outage.sites_affected = sites_affected.get(outage.pk, outage.sites_affected)
        entries = _sites_outages_settle(to_settle)
        changed_feeders = set()
        notices = []
        for site_id in site_ids:
            result = results[site_id]
            result.entries = entries.get(site_id, [])
            if result.created or result.updated or result.voided:
                grid = grids.get(site_id)
                notices.append((site_id, grid[0] if grid else None))
                if grid is not None:
                    changed_feeders.add(grid[0])
        _outages_changed_notify(notices)
        now = timezone.now()
        # Replayed reports confirm (or, voided, unconfirm) the feeder's suspected ones, synced
        # here. A feeder with recent drops but no suspected outage (a changed cut may cover or
        # uncover a drop) goes to the suspected outages' own drain, so a storm's site drains do
        # not sync every feeder they touch, the sockets of the storm having dropped on all.
        # Feeders with neither have nothing to sync: asked of all in two queries.
        changed, since = sorted(changed_feeders), now - SUSPECTED_HORIZON
        suspicious = selectors.feeders_with_suspicions(changed, since=since)
        _suspected_syncs(suspicious, now)
        dropped = set(selectors.feeders_dropped(changed, since=since)) - set(suspicious)
        _suspected_soon(sorted(dropped))
    return results


def _locks(prefix: str, keys) -> None:
    """`_lock` of each `prefix + key`, in the order of `keys` (sorted by the caller), in one
    statement."""
    if not keys:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(%s || k, 0))) "
            "FROM unnest(%s::bigint[]) AS k",
            [prefix, list(keys)],
        )


def _outages_changed_notify(notices: list[tuple[int, int | None]]) -> None:
    """Tell each (site, feeder)'s viewers and the fleet, after commit, that the site's outages
    changed (opened, ended, voided): a small message, on which pages fetch what they show
    afresh. All of a reconcile's messages go in one Redis round trip."""
    if not notices:
        return
    sends = [
        (
            [site_group(site_id), fleet_group()],
            live_event({"type": "outage", "site": site_id, "feeder": feeder_id}),
        )
        for site_id, feeder_id in notices
    ]
    transaction.on_commit(lambda: live_send_each(sends))


def _sites_outages_sync(
    site_ids: list[int],
) -> dict[int, tuple[ReconcileResult, list[Outage], set[datetime]]]:
    """Store each site's outages derived afresh, set-based; per site, its result, the outages
    to settle and `moved`: the starts, before and after, of every outage of the site that was
    created, changed or voided (all its grid outages can depend on).

    Each site is derived alone, as `site_outage_intervals` and `match_by_overlap` say; only the
    reads and writes are shared: one query for all the events, one for all the stored outages,
    one upsert of the reconcile counts, then the writes in an order that keeps a start unique
    among a site's live outages at every row: the voided first (one statement), the outages
    whose start moves one by one in time order, the others changed (one statement), the new
    ones (one insert)."""
    reports: dict[int, list[PowerReport]] = {site_id: [] for site_id in site_ids}
    for site_id, device, state, at in PowerEvent.objects.filter(site_id__in=site_ids).values_list(
        "site_id", "device_id", "state", "at"
    ):
        reports[site_id].append(PowerReport(device, state, at))
    SiteReconcile.objects.bulk_create(
        [SiteReconcile(site_id=site_id, events=len(reports[site_id])) for site_id in site_ids],
        update_conflicts=True,
        unique_fields=["site"],
        update_fields=["events", "reconciled_at"],
    )
    stored_of: dict[int, list[Outage]] = {site_id: [] for site_id in site_ids}
    for outage in Outage.objects.filter(site_id__in=site_ids, kind=OutageKind.SITE).select_related(
        "credit_policy"
    ):
        stored_of[outage.site_id].append(outage)
    threshold = settings.OUTAGE_MOMENTARY_THRESHOLD
    synced = {}
    voided: list[Outage] = []
    moving: list[Outage] = []
    changed: list[Outage] = []
    fresh: list[Outage] = []
    for site_id in site_ids:
        result = ReconcileResult()
        moved: set[datetime] = set()
        stored = stored_of[site_id]
        intervals = site_outage_intervals(reports[site_id], momentary_threshold=threshold)
        pairs, unmatched = match_by_overlap(
            intervals,
            [o for o in stored if o.status != OutageStatus.VOID],
            void=[o for o in stored if o.status == OutageStatus.VOID],
        )
        to_settle = []
        for outage in unmatched:
            outage.status = OutageStatus.VOID
            voided.append(outage)
            result.voided += 1
            to_settle.append(outage)
            moved.add(outage.started_at)
        for interval, outage in pairs:  # a void one paired is the same cut derived again: revived
            status = OutageStatus.OPEN if interval.ended_at is None else OutageStatus.ENDED
            values = {
                "started_at": interval.started_at,
                "ended_at": interval.ended_at,
                "momentary": interval.momentary,
                "status": status,
            }
            if outage is None:
                outage = Outage(kind=OutageKind.SITE, site_id=site_id, **values)
                fresh.append(outage)
                result.created += 1
                moved.add(interval.started_at)
            elif any(getattr(outage, name) != value for name, value in values.items()):
                moved.update((outage.started_at, interval.started_at))
                (moving if outage.started_at != interval.started_at else changed).append(outage)
                for name, value in values.items():
                    setattr(outage, name, value)
                result.updated += 1
            if status == OutageStatus.ENDED:
                to_settle.append(outage)
        # Void ones settle again (to 0) on every reconcile, so none keeps a payment.
        to_settle += [o for o in stored if o.status == OutageStatus.VOID and o not in unmatched]
        synced[site_id] = (result, to_settle, moved)
    now = timezone.now()
    if voided:
        Outage.objects.filter(pk__in=[o.pk for o in voided]).update(
            status=OutageStatus.VOID, updated_at=now
        )
    for outage in moving:  # in each site's time order (the pairs'), as single reconciles do
        outage.save(update_fields=["started_at", "ended_at", "momentary", "status", "updated_at"])
    if changed:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE outages_outage AS o SET ended_at = v.ended_at, "
                "momentary = v.momentary, status = v.status, updated_at = %s "
                "FROM unnest(%s::bigint[], %s::timestamptz[], %s::boolean[], %s::text[]) "
                "AS v(id, ended_at, momentary, status) WHERE o.id = v.id",
                [
                    now,
                    [o.pk for o in changed],
                    [o.ended_at for o in changed],
                    [o.momentary for o in changed],
                    [str(o.status) for o in changed],
                ],
            )
    for outage in [*voided, *changed]:
        outage.updated_at = now
    if fresh:
        Outage.objects.bulk_create(fresh)
    return synced


def site_outages_drain() -> dict[int, ReconcileResult]:
    """Reconcile every site reports marked since the last drain: the flag is cleared first, then
    the set is taken (and emptied) at once, and the sites are reconciled whole transformers at a
    time, up to DRAIN_CHUNK_SITES sites a transaction (`sites_outages_reconcile`, set-based:
    each feeder regrouped once, its transformer once). A site marked meanwhile queues the next
    drain. Should a transaction fail (database down), the sites not yet reconciled are marked
    again before the error propagates, so the task's retry (or the next drain) takes them. A
    chunk failing for another reason (something of one site the code cannot take) is
    reconciled in halves, down to the site to blame (`_in_parts`): it is marked again alone, and
    its error propagates once every other site is reconciled.

    One drain runs at a time (`_DRAIN_LOCK`): a drain queued while another runs waits for it
    before it clears the flag and takes the set, so it takes every site marked meanwhile. Two
    drains at once each took the few sites marked when they started, then waited for the other's
    feeder locks anyway; a storm's reports made many small drains, each paying the regrouping of
    every feeder it touched (bench/outages)."""
    with _drain_lock() as running:
        if not running:
            # Another drain has run for DRAIN_WAIT_S: the sites stay marked for the next one
            # (queued once the flag lapses, or by the sweep).
            logger.warning(
                "outages: a drain has run for over %s s; leaving the sites to the next",
                DRAIN_WAIT_S,
            )
            return {}
        return _site_outages_drain()


# A session-level advisory lock, taken before any other lock of the outages (so first in their
# order: no deadlock), released at the end of the drain, or with its connection should the
# worker die.
_DRAIN_LOCK = "outages.drain"
DRAIN_WAIT_S = 60
# The most sites a drain reconciles in one transaction (a transformer's are never split): five
# storm drains of 500 sites on five transformers each took 1.23 s of CPU in all a transformer
# at a time, 0.79 s whole (N = 5,000, in one process); a sweep after a long broker outage
# still commits as it goes.
DRAIN_CHUNK_SITES = 1000


@contextmanager
def _drain_lock():
    """Hold the drain lock for the block (yields True), waiting up to DRAIN_WAIT_S for it
    (yields False if it did not come)."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{DRAIN_WAIT_S}s'")
            cursor.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [_DRAIN_LOCK])
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        yield False
        return
    try:
        yield True
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [_DRAIN_LOCK])
        except DatabaseError:
            connection.close()  # the lock goes with its session


def _site_outages_drain() -> dict[int, ReconcileResult]:
    marked = _marked_take(RECONCILE_DIRTY_KEY, flag=RECONCILE_QUEUED_KEY)
    grids = selectors.sites_grid(marked)
    pending = [site_id for site_id in marked if site_id in grids]  # a site deleted meanwhile
    by_transformer: dict[int | None, list[int]] = defaultdict(list)
    for site_id in pending:
        by_transformer[grids[site_id][1] if grids[site_id] else None].append(site_id)
    # Whole transformers together, up to DRAIN_CHUNK_SITES sites a transaction: each level of
    # the regrouping costs a few statements whatever the number of feeders (`_grids_sync`).
    # Sites on no feeder share nothing: each is a group of its own.
    groups = [ids for t, ids in sorted(by_transformer.items(), key=lambda kv: kv[0] or 0) if t]
    groups += [[site_id] for site_id in by_transformer.get(None, [])]
    chunks: list[list[int]] = []
    for site_ids in groups:
        if chunks and len(chunks[-1]) + len(site_ids) <= DRAIN_CHUNK_SITES:
            chunks[-1] += site_ids
        else:
            chunks.append(list(site_ids))
    results: dict[int, ReconcileResult] = {}

    def reconcile(site_ids: list[int]) -> None:
        results.update(sites_outages_reconcile(site_ids=site_ids))

    _drain_parts(RECONCILE_DIRTY_KEY, chunks, reconcile, what="sites")
    return results


def _drain_parts(
    key: str, parts: list[list[int]], run: Callable[[list[int]], None], *, what: str
) -> None:
    """Run each part of a drain (`_in_parts`); the ids not done when it ends, by a failure or a
    stop, are marked in the Redis set `key` again for the next drain. The ids given up are then
    logged and the first one's error raised, so the task fails visibly."""
    done: set[int] = set()

    def tracked(ids: list[int]) -> None:
        run(ids)
        done.update(ids)

    failures: dict[int, Exception] = {}
    try:
        for part in parts:
            failures.update(_in_parts(part, tracked))
    finally:
        if left := sorted({i for part in parts for i in part} - done):
            sync_client().sadd(key, *left)
    if failures:
        ids = list(failures)
        logger.error(
            "outages: %d %s could not be drained (%s%s: %s); marked for the next drain",
            len(ids),
            what,
            ", ".join(map(str, ids[:20])),
            ", ..." if len(ids) > 20 else "",
            "; ".join(sorted({f"{type(e).__name__}: {e}" for e in failures.values()}))[:500],
        )
        raise next(iter(failures.values()))


# Failures no part of a drain is to blame for: the database away (or a deadlock, retried by the
# task), or the task's time running out. They propagate at once.
_DRAIN_STOPS = (OperationalError, InterfaceError, SoftTimeLimitExceeded)


def _in_parts(ids: list[int], run: Callable[[list[int]], None]) -> dict[int, Exception]:
    """`run(ids)`, a transaction of its own. Should it fail for a reason of the ids' own
    (something of one site or feeder that the code cannot take), each half is run apart, and
    each half that fails again is halved in turn, down to the ids to blame: those that keep
    failing hold none of the others back (a drain failing whole each time paid no one behind
    it). The halving has a budget of about four runs per halving level (enough to find a few
    bad ids among a thousand); a failure of every id (a defect) spends it and the parts left
    are given up whole, so it costs a few times the part's work, not a run per id. Returns the
    ids given up, with their error; `_DRAIN_STOPS` propagate."""
    try:
        run(ids)
    except _DRAIN_STOPS:
        raise
    except Exception as exc:
        return _blamed(ids, exc, run, budget=[4 * len(ids).bit_length() + 4])
    return {}


def _blamed(
    ids: list[int], exc: Exception, run: Callable[[list[int]], None], *, budget: list[int]
) -> dict[int, Exception]:
    """The ids to give up of a part that failed with `exc` (see `_in_parts`); `budget` holds
    the runs left."""
    if len(ids) <= 1 or budget[0] < 2:
        return dict.fromkeys(ids, exc)
    budget[0] -= 2
    middle = len(ids) // 2
    blamed: dict[int, Exception] = {}
    for half in (ids[:middle], ids[middle:]):
        try:
            run(half)
        except _DRAIN_STOPS:
            raise
        except Exception as half_exc:
            blamed.update(_blamed(half, half_exc, run, budget=budget))
    return blamed


def _marked_take(key: str, *, flag: str) -> list[int]:
    """A drain's start: its queued `flag` cleared (a mark from now on queues the next drain),
    then every id of the set `key` taken and the set emptied at once."""
    client = sync_client()
    client.delete(flag)
    with client.pipeline(transaction=True) as pipe:
        pipe.smembers(key)
        pipe.delete(key)
        members = pipe.execute()[0]
    return sorted(int(member) for member in members)


def suspected_outages_drain() -> list[int]:
    """Sync the suspected outages of every feeder abrupt socket ends marked since the last
    drain of them (`sockets_drop_record`): the flag is cleared first, then the set taken at
    once, and every feeder synced in one transaction under their locks (`_suspected_syncs`:
    read for all in four queries; a transaction and five queries a feeder kept a worker
    process busy through a storm, bench/outages). A feeder marked meanwhile queues the next
    drain; should the database fail, the feeders not synced are marked again before the error
    propagates. Apart from the sites' drains, so the feeder outages of a storm wait for its
    drops only while a drain holds their feeders' locks (68 ms of CPU for 25 feeders). Should
    the transaction fail for another reason, its feeders are synced in halves, down to the
    feeder to blame (`_in_parts`): it is marked again alone, and its error propagates once the
    others are synced. Returns the feeders synced."""
    feeders = _marked_take(SUSPECTED_DIRTY_KEY, flag=SUSPECTED_QUEUED_KEY)

    def sync(feeder_ids: list[int]) -> None:
        with transaction.atomic():
            _locks("outages.feeder:", feeder_ids)
            _suspected_syncs(feeder_ids, timezone.now())

    _drain_parts(SUSPECTED_DIRTY_KEY, [feeders], sync, what="feeders")
    return feeders


def site_outages_sweep() -> list[int]:
    """Have every site with power events its last reconcile did not read reconciled by a drain:
    the safety net for a report whose own reconcile was lost (the broker was down when it was
    queued). The sites are marked and a drain queued whatever the flag says (a flag left by a
    lost task must not hold the net back; a drain with nothing marked does nothing). Marked,
    not queued one task each: mid-storm, when thousands of sites wait for the running drain,
    a task per site queued ahead of the next drain held the feeder outages back by seconds
    (bench/outages). With Redis unreachable, each site's own task is queued. Runs on beat;
    returns the sites."""
    site_ids = selectors.sites_not_reconciled()
    if not site_ids:
        return site_ids
    try:
        with sync_client().pipeline(transaction=False) as pipe:
            pipe.sadd(RECONCILE_DIRTY_KEY, *site_ids)
            pipe.set(RECONCILE_QUEUED_KEY, 1, ex=RECONCILE_QUEUED_TTL_S)
            pipe.execute()
    except RedisError:
        for site_id in site_ids:
            _reconcile_later(site_id)
        return site_ids
    _drain_queue("site_outages_drain", flag=RECONCILE_QUEUED_KEY)
    return site_ids


def _sites_outages_settle(to_settle: dict[int, list[Outage]]) -> dict[int, list[CreditEntry]]:
    """Settle the outages of many sites at once (site -> its outages to settle): what each must
    have earned in all (`_outage_target`), what its entries sum to now and their last revision
    (one query for all), and the differences appended in one insert; the entries by site. An
    outage settled for the first time takes its site's policy now (one query for all the
    sites, one update per policy)."""
    outages = [outage for rows in to_settle.values() for outage in rows]
    if not outages:
        return {}
    first = [o for o in outages if o.settled_at is None and o.status != OutageStatus.VOID]
    if first:
        policies = selectors.credit_policies_for_sites({o.site_id for o in first})
        now = timezone.now()
        by_policy: dict[int | None, list[int]] = defaultdict(list)
        for outage in first:
            outage.credit_policy = policies.get(outage.site_id)
            outage.settled_at = outage.updated_at = now
            by_policy[outage.credit_policy_id].append(outage.pk)
        for policy_id, ids in by_policy.items():
            Outage.objects.filter(pk__in=ids).update(
                credit_policy_id=policy_id, settled_at=now, updated_at=now
            )
    paid: dict[int, dict[str, Decimal]] = defaultdict(dict)
    last: dict[int, int] = {}
    for outage_id, currency, total, revision in (
        CreditEntry.objects.filter(
            site_id__in=list(to_settle), outage_id__in=[o.pk for o in outages]
        )
        .values("outage_id", "currency")
        .annotate(total=Sum("amount"), last=Max("revision"))
        .order_by()
        .values_list("outage_id", "currency", "total", "last")
    ):
        paid[outage_id][currency] = total
        last[outage_id] = max(last.get(outage_id, 0), revision)
    entries = []
    for outage in outages:
        amount, currency, memo = _outage_target(outage)
        revision = last.get(outage.pk, 0)
        reason = {"outage_id": outage.pk}
        owed = _owed(paid=paid.get(outage.pk, {}), amount=amount, currency=currency)
        for cur, difference in sorted(owed.items()):
            revision += 1
            entries.append(_entry(outage.site_id, difference, cur, revision, memo, reason))
    by_site: dict[int, list[CreditEntry]] = defaultdict(list)
    for entry in CreditEntry.objects.bulk_create(entries, batch_size=2000):
        by_site[entry.site_id].append(entry)
    return by_site


@dataclass
class GridResult:
    # Site outages whose grid outage now affects another number of sites: id -> that number.
    sites_affected: dict[int, int] = field(default_factory=dict)
    # Sites with an ended outage whose settlement depends on that number (policy minimum above 1).
    sites_to_resettle: set[int] = field(default_factory=set)


def _grids_sync(moved_on: dict[tuple[int, int], set[datetime]]) -> GridResult:
    """Bring the outages of each (feeder, transformer) of `moved_on`, and its transformer's, in
    line with their site outages, near the starts given for it (where the caller's site outages
    were created, changed or voided).

    Site outages of the feeder (not void) that start within OUTAGE_CORRELATION_WINDOW of each
    other, when of at least OUTAGE_MIN_GRID_SITES sites, make one feeder outage; feeder outages
    of one transformer's feeders starting within the window of each other make one transformer
    outage (`outages.grid_outages`). Grouping restarts at every gap between starts longer than
    the window, so only the members chained to `moved` are grouped again (`chain_span`): a
    report costs the same whatever else the feeder holds. The grid outages found are matched to
    the stored ones by the members they share (`match_by_members`), so a cluster that grows
    earlier keeps its id; a stored one no longer found becomes void and its members are linked
    to the one that now holds them. Each site outage in the span then gets the sites affected by
    the widest grid outage it is part of (1 when none).

    Every feeder is regrouped first, then each transformer once from what all its feeders moved,
    then the sites affected once for all: a storm's drain over five feeders of a transformer
    regroups the transformer and rewrites its site outages' counts once, not five times. Each
    level is read and written for all its feeders (transformers) at once (`_grid_levels_sync`).

    The result never depends on which site's reports came first: within the span the grouping
    is derived afresh, and outside it nothing it depends on changed. The caller,
    `sites_outages_reconcile`, holds the feeders' and the transformers' locks and has reconciled
    the sites' own outages.
    """
    window = settings.OUTAGE_CORRELATION_WINDOW
    transformer_of = {feeder_id: transformer_id for feeder_id, transformer_id in moved_on}
    feeders = _grid_levels_sync(
        kind=OutageKind.FEEDER,
        moved={feeder_id: moved for (feeder_id, _), moved in moved_on.items()},
        window=window,
        min_units=settings.OUTAGE_MIN_GRID_SITES,
        sites_of=selectors.feeders_site_ids(transformer_of),
    )
    feeder_moved: dict[int, set[datetime]] = defaultdict(set)
    for feeder_id, result in feeders.items():
        feeder_moved[transformer_of[feeder_id]] |= result.moved
    transformers = _grid_levels_sync(
        kind=OutageKind.TRANSFORMER,
        moved=feeder_moved,
        window=window,
        min_units=MIN_TRANSFORMER_FEEDERS,
    )
    if not any(r.changed for r in [*feeders.values(), *transformers.values()]):
        return GridResult()
    # Only the site outages whose count differs are written (the comparison is the
    # database's): loading all of the transformer's on every report made a storm cost sites².
    return _sites_affected_sync(
        site_outages=[pk for r in feeders.values() for pk in r.members],
        feeder_outages=[pk for r in transformers.values() for pk in r.members],
    )


@dataclass
class _LevelResult:
    changed: bool = False
    members: list[int] = field(default_factory=list)  # the members regrouped, by id
    # The starts, before and after, of the grid outages made, changed or voided.
    moved: set[datetime] = field(default_factory=set)


def _grid_spans(
    *, kind: str, moved: dict[int, set[datetime]], window, sites_of
) -> dict[int, list[selectors.GridRow]]:
    """The members of each group chained to the instants it `moved` (see `chain_span`): every
    group read in one query, a little wider each time for the groups whose chain ran past what
    was read."""
    spans: dict[int, list[selectors.GridRow]] = {}
    pending = {group: (min(starts), max(starts), window) for group, starts in moved.items()}
    while pending:
        rows_of = selectors.grid_members_near(
            kind=kind,
            spans={g: (lo - reach, hi + reach) for g, (lo, hi, reach) in pending.items()},
            sites_of=sites_of,
        )
        wider = {}
        for group, (lo, hi, reach) in pending.items():
            rows = rows_of.get(group, [])
            first, last = chain_span([row.started_at for row in rows], lo, hi, window)
            if first - window >= lo - reach and last + window <= hi + reach:
                spans[group] = [row for row in rows if first <= row.started_at <= last]
            else:
                wider[group] = (first, last, reach * 4)
        pending = wider
    return spans


@dataclass
class _GridWrites:
    """What a level's regrouping writes, for all its groups in a few statements."""

    void: list[int] = field(default_factory=list)
    changed: list[tuple[int, dict]] = field(default_factory=list)  # (stored pk, values)
    new: list[Outage] = field(default_factory=list)
    links: list[tuple[int, int | Outage | None]] = field(default_factory=list)  # member, parent

    def apply(self) -> None:
        """Voids first (so no start is held twice in between), then the moves and changes in one
        statement, the new rows, and the members' links to their grid outages."""
        now = timezone.now()
        if self.void:
            Outage.objects.filter(pk__in=self.void).update(status=OutageStatus.VOID, updated_at=now)
        if self.changed:
            columns = zip(*[(pk, *values.values()) for pk, values in self.changed], strict=True)
            with connection.cursor() as cursor:
                cursor.execute(_GRID_OUTAGES_UPDATE, [now, *map(list, columns)])
        if self.new:
            Outage.objects.bulk_create(self.new)
        if self.links:
            ids = [member for member, _ in self.links]
            parents = [getattr(parent, "pk", parent) for _, parent in self.links]
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE outages_outage AS o SET grid_outage_id = v.parent "
                    "FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, parent) WHERE o.id = v.id",
                    [ids, parents],
                )


# The columns in the order of `_grid_values`.
_GRID_OUTAGES_UPDATE = """
UPDATE outages_outage AS o SET started_at = v.started_at, ended_at = v.ended_at,
    momentary = v.momentary, status = v.status, sites_affected = v.sites_affected,
    customer_minutes = v.customer_minutes, updated_at = %s
FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[], %s::boolean[], %s::varchar[],
    %s::integer[], %s::numeric[]) AS v(id, started_at, ended_at, momentary, status,
    sites_affected, customer_minutes)
WHERE o.id = v.id
"""


def _grid_values(found) -> dict:
    """A found grid outage's stored values, in `_GRID_OUTAGES_UPDATE`'s order."""
    return {
        "started_at": found.started_at,
        "ended_at": found.ended_at,
        "momentary": found.momentary,
        "status": OutageStatus.OPEN if found.ended_at is None else OutageStatus.ENDED,
        "sites_affected": found.sites_affected,
        "customer_minutes": found.customer_minutes,
    }


def _grid_member(row: selectors.GridRow, kind: str) -> Member:
    if kind == OutageKind.FEEDER:  # a site outage joining a feeder outage
        sites, minutes = 1, site_customer_minutes(row.started_at, row.ended_at, row.momentary)
    else:
        sites, minutes = row.sites_affected, row.customer_minutes
    return Member(
        key=row.pk,
        unit=row.unit,
        started_at=row.started_at,
        ended_at=row.ended_at,
        momentary=row.momentary,
        sites_affected=sites,
        customer_minutes=minutes,
    )


def _grid_levels_sync(
    *, kind: str, moved: dict[int, set[datetime]], window, min_units: int, sites_of=None
) -> dict[int, _LevelResult]:
    """Derive one level of grid outages (`kind` "feeder": each feeder's from its site outages;
    "transformer": each transformer's from its feeder outages) from the members chained to each
    group's `moved` instants, store them against the stored ones they share members with and
    link the members. All the groups are read in two queries and written in a few statements."""
    moved = {group: starts for group, starts in moved.items() if starts}
    results = {group: _LevelResult() for group in moved}
    member_kind = OutageKind.SITE if kind == OutageKind.FEEDER else OutageKind.FEEDER
    spans = _grid_spans(kind=member_kind, moved=moved, window=window, sites_of=sites_of)
    near = {}
    for group, starts in moved.items():
        span = spans[group]
        starts = [row.started_at for row in span] or starts
        # Every stored grid outage a span member was (or might have been) part of: one starting
        # in the span, or one a member is still linked to.
        linked = sorted({row.grid_outage_id for row in span if row.grid_outage_id is not None})
        near[group] = (min(starts), max(starts), linked)
    stored = selectors.grid_outages_near(kind=kind, near=near)
    group_field = "feeder_id" if kind == OutageKind.FEEDER else "transformer_id"
    writes = _GridWrites()
    for group in sorted(moved):
        span, result = spans[group], results[group]
        result.members = [row.pk for row in span]
        derived = grid_outages(
            [_grid_member(row, kind) for row in span], window=window, min_units=min_units
        )
        nearby = stored.get(group, [])
        pairs, unmatched = match_by_members(
            derived,
            [o for o in nearby if o.status != OutageStatus.VOID],
            {row.pk: row.grid_outage_id for row in span},
        )
        void_by_start = {o.started_at: o for o in nearby if o.status == OutageStatus.VOID}
        for outage in unmatched:
            writes.void.append(outage.pk)
            result.moved.add(outage.started_at)
        # A start is unique among a group's live grid outages: one that must move off a start
        # another moves onto is made void for the moment (it is written with its own values
        # just after), so no order of moves can collide.
        targets = {found.started_at for found, _ in pairs}
        writes.void += [
            outage.pk
            for found, outage in pairs
            if outage is not None
            and outage.started_at != found.started_at
            and outage.started_at in targets
        ]
        parent_of: dict[int, int | Outage] = {}
        for found, outage in pairs:
            outage = outage or void_by_start.get(found.started_at)
            values = _grid_values(found)
            if outage is None:
                parent = Outage(kind=kind, **{group_field: group}, **values)
                writes.new.append(parent)
                result.moved.add(found.started_at)
            else:
                parent = outage.pk
                if any(getattr(outage, name) != value for name, value in values.items()):
                    result.moved.update((outage.started_at, found.started_at))
                    writes.changed.append((outage.pk, values))
            parent_of.update(dict.fromkeys(found.members, parent))
        relinked = [
            (row.pk, parent_of.get(row.pk))
            for row in span
            if row.grid_outage_id != parent_of.get(row.pk)
        ]
        writes.links += relinked
        result.changed = bool(result.moved or relinked)
    writes.apply()
    return results


# Each live site outage among the given ones (by id, or by their feeder outage) takes the sites
# affected by the widest grid outage it is part of (its feeder outage's transformer outage, else
# its feeder outage, else 1), where that differs: one statement, the rows changed returned.
_SITES_AFFECTED_SYNC = """
UPDATE outages_outage AS o SET sites_affected = w.widest
FROM (
    SELECT s.id, COALESCE(t.sites_affected, f.sites_affected, 1) AS widest
    FROM outages_outage s
    LEFT JOIN outages_outage f ON f.id = s.grid_outage_id
    LEFT JOIN outages_outage t ON t.id = f.grid_outage_id
    WHERE s.kind = 'site' AND s.status <> 'void'
      AND (s.id = ANY(%s::bigint[]) OR s.grid_outage_id = ANY(%s::bigint[]))
) AS w
WHERE o.id = w.id AND o.sites_affected <> w.widest
RETURNING o.id, o.site_id, o.sites_affected, o.status, o.credit_policy_id
"""


def _sites_affected_sync(*, site_outages: list[int], feeder_outages: list[int]) -> GridResult:
    """Give each site outage of `site_outages`, and each member of `feeder_outages`, the sites
    affected by the widest grid outage it is part of. In the database, in one statement: in a
    storm every drain changes the count of every site outage under the transformer, and read
    as models (with their grid outages) they were most of a drain's time (bench/outages)."""
    result = GridResult()
    with connection.cursor() as cursor:
        cursor.execute(_SITES_AFFECTED_SYNC, [site_outages, feeder_outages])
        rows = cursor.fetchall()
    ended_under: dict[int, set[int]] = defaultdict(set)  # policy -> sites with an ended outage
    for outage_id, site_id, sites, status, policy_id in rows:
        result.sites_affected[outage_id] = sites
        if status == OutageStatus.ENDED and policy_id is not None:
            ended_under[policy_id].add(site_id)
    if ended_under:
        for policy_id in CreditPolicy.objects.filter(
            pk__in=list(ended_under), min_sites_affected__gt=1
        ).values_list("pk", flat=True):
            result.sites_to_resettle |= ended_under[policy_id]
    return result


def _outage_target(outage: Outage) -> tuple[Decimal, str | None, str]:
    """What the outage must have earned in all: amount, currency (None: nothing in any), memo.
    A live outage has its policy (or none) from its first settlement (`_sites_outages_settle`)."""
    when = f"cut from {outage.started_at:%Y-%m-%d %H:%M:%S} UTC"
    if outage.status == OutageStatus.VOID:
        return Decimal(0), None, f"{when}: void, superseded by later reports"
    policy = outage.credit_policy
    if policy is None:
        return Decimal(0), None, f"{when}: no credit policy"
    duration = duration_iso(outage.duration)
    if outage.momentary:
        return Decimal(0), policy.currency, f"{when}, {duration}: momentary, not paid"
    if policy.min_sites_affected > outage.sites_affected:
        return (
            Decimal(0),
            policy.currency,
            f"{when}, {duration}: {policy.name} pays only for outages of at least "
            f"{policy.min_sites_affected} sites; this one affected {outage.sites_affected}",
        )
    amount = credit_for(policy, outage.duration)
    return amount, policy.currency, f"{when}, {duration}: {policy.name}"


def _owed(*, paid: dict[str, Decimal], amount: Decimal, currency: str | None) -> dict[str, Decimal]:
    """What the ledger still owes (or takes back) per currency so that a reason's entries sum
    to `amount` in `currency` and to 0 in any other, given what they sum to now (`paid`)."""
    owed = {cur: -total for cur, total in paid.items() if total != 0 and cur != currency}
    if currency is not None and amount != paid.get(currency, 0):
        owed[currency] = amount - paid.get(currency, 0)
    return owed


def _entry(site_id: int, amount: Decimal, currency: str, revision: int, memo: str, reason: dict):
    return CreditEntry(
        site_id=site_id,
        amount=amount,
        currency=currency,
        revision=revision,
        memo=(memo if revision == 1 else f"correction: {memo}")[:250],
        **reason,
    )


def credits_settle_dr_event(
    *, dr_event_id: int, payments: dict[int, tuple[Decimal, str, str]]
) -> list[CreditEntry]:
    """`credit_settle` for many sites of one demand-response event at once: `payments` maps a
    site to (amount, currency, memo). The sites' locks are taken in id order in one statement,
    what was paid and the last revisions are read in one query each, and the differences are
    appended in one insert; the same ledger as calling `credit_settle` site by site."""
    site_ids = sorted(payments)
    if not site_ids:
        return []
    reason = {"dr_event_id": dr_event_id}
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_advisory_xact_lock(hashtextextended('outages.site:' || s, 0))) "
                "FROM (SELECT s FROM unnest(%s::bigint[]) s ORDER BY s) ordered",
                [site_ids],
            )
        paid: dict[int, dict[str, Decimal]] = {site_id: {} for site_id in site_ids}
        last: dict[int, int] = {}
        rows = (
            CreditEntry.objects.filter(site_id__in=site_ids, **reason)
            .values("site_id", "currency")
            .annotate(total=Sum("amount"), last=Max("revision"))
            .order_by()
            .values_list("site_id", "currency", "total", "last")
        )
        for site_id, currency, total, revision in rows:
            paid[site_id][currency] = total
            last[site_id] = max(last.get(site_id, 0), revision)
        entries = []
        for site_id in site_ids:
            amount, currency, memo = payments[site_id]
            revision = last.get(site_id, 0)
            for cur, difference in sorted(
                _owed(paid=paid[site_id], amount=amount, currency=currency).items()
            ):
                revision += 1
                entries.append(_entry(site_id, difference, cur, revision, memo, reason))
        return CreditEntry.objects.bulk_create(entries, batch_size=2000)


def _settle(
    *,
    site_id: int,
    reason: dict[str, int],
    paid: dict[str, Decimal],
    amount: Decimal,
    currency: str | None,
    memo: str,
) -> list[CreditEntry]:
    """Append what makes `reason`'s entries sum to `amount` in `currency` and to 0 in any other."""
    owed = _owed(paid=paid, amount=amount, currency=currency)
    if not owed:
        return []
    last = CreditEntry.objects.filter(site_id=site_id, **reason).aggregate(n=Max("revision"))["n"]
    revision = last or 0
    entries = []
    for cur, difference in sorted(owed.items()):
        revision += 1
        entry = _entry(site_id, difference, cur, revision, memo, reason)
        entry.save(force_insert=True)
        entries.append(entry)
    return entries


def credit_settle(
    *,
    site_id: int,
    amount: Decimal,
    currency: str,
    memo: str,
    outage_id: int | None = None,
    dr_event_id: int | None = None,
) -> list[CreditEntry]:
    """Make the ledger pay `amount` in `currency` in all for one reason (an outage, or a
    demand-response event by id), by appending the difference to what it already paid; entries
    in another currency for the same reason are taken back. Calling it again with the same
    amount writes nothing, so a retried settlement pays once.

    `amount` must already be rounded to the currency's minor unit (see `credit_rules`).
    """
    if (outage_id is None) == (dr_event_id is None):
        raise ValueError("give exactly one reason: outage_id or dr_event_id")
    reason = {"outage_id": outage_id} if outage_id is not None else {"dr_event_id": dr_event_id}
    with transaction.atomic():
        _site_lock(site_id)
        paid = selectors.credit_paid(site_id=site_id, **reason)
        return _settle(
            site_id=site_id, reason=reason, paid=paid, amount=amount, currency=currency, memo=memo
        )


def site_credit_policy_set(*, site_id: int, policy_id: int | None) -> None:
    """Give the site its own credit policy, or (None) let the default apply again."""
    if policy_id is None:
        SitePolicy.objects.filter(site_id=site_id).delete()
        return
    policy = CreditPolicy.objects.get(pk=policy_id)
    SitePolicy.objects.update_or_create(site_id=site_id, defaults={"policy": policy})


# Suspected outages look at drops and cuts this recent; older ones are history.
SUSPECTED_HORIZON = timedelta(days=1)
# The beat looks for suspected outages on feeders with an abrupt drop this recent (silent devices
# are marked offline minutes after their last sign of life, which is their drop instant).
SWEEP_DROPS_SINCE = timedelta(minutes=15)


def sockets_drop_record(*, site_ids: list[int]) -> None:
    """Device sockets of these sites ended abruptly (`devices.services.devices_disconnected`):
    after commit their feeders are marked for the next drain of suspected outages
    (`suspected_outages_drain`), so a socket's end never waits for it. One mark per feeder and a
    few drains for a storm: a task per feeder and per batch of socket ends, as before, was
    thousands of tasks when the sockets of 2,500 homes dropped within 10 s, and the worker got
    to the feeder outages 5 s after the last report (bench/outages). With Redis unreachable,
    each feeder's own task is queued; with the broker down too, the beat's sweep finds the
    drops."""
    if site_ids:
        grids = selectors.sites_grid(site_ids).values()
        _suspected_soon(sorted({grid[0] for grid in grids if grid}))


def _suspected_soon(feeder_ids: list[int]) -> None:
    """After commit, mark the feeders for the next drain of suspected outages."""
    if feeder_ids:
        mark = partial(
            _drain_soon, SUSPECTED_DIRTY_KEY, feeder_ids, flag=SUSPECTED_QUEUED_KEY,
            task="suspected_outages_drain", alone=_suspected_later,
        )  # fmt: skip
        transaction.on_commit(mark, robust=True)


def _suspected_later(feeder_id: int) -> None:
    from outages.tasks import suspected_outages_sync as task

    task.delay(feeder_id)


def suspected_outages_sync(*, feeder_id: int, now: datetime | None = None) -> bool:
    """Open, grow, confirm and dismiss the feeder's suspected outages; whether any changed.

    A site has dropped when every one of its devices is offline and the last of their sockets
    ended abruptly (`Device.dropped_at`). Dropped sites of the feeder with no site outage
    spanning their drop instant (no `lost` report covers it) join a suspected outage whose sites
    all dropped within OUTAGE_CORRELATION_WINDOW of theirs; the others, when at least
    OUTAGE_MIN_GRID_SITES of them dropped within the window of each other, open one (grouped as
    grid outages are, `outages.grid_outages`). Each suspected outage's status is then derived
    afresh (`outages.suspected_outages.verdict`): confirmed by a site outage of the feeder from
    replayed reports, dismissed once all its sites are back for OUTAGE_SUSPECTED_GRACE.

    Under the feeder's lock (the one site reconciles take), and a drop of a site joins one
    suspected outage only (a unique constraint), so two workers at once give the result of one.
    """
    with transaction.atomic():
        _lock(f"outages.feeder:{feeder_id}")
        return _suspected_syncs([feeder_id], now or timezone.now())[feeder_id]


def _suspected_syncs(feeder_ids: list[int], now: datetime) -> dict[int, bool]:
    """`suspected_outages_sync` of each feeder (the caller holds their locks), read for all of
    them in a few queries: whether each changed."""
    if not feeder_ids:
        return {}
    since = now - SUSPECTED_HORIZON
    sockets_of = registry.sites_sockets(feeder_ids=feeder_ids)
    sites_of = selectors.feeders_site_ids(feeder_ids)
    cuts_of = selectors.site_cuts(
        site_ids=[site for sites in sites_of.values() for site in sites], since=since
    )
    suspected_of: dict[int, list[SuspectedOutage]] = defaultdict(list)
    for outage in selectors.suspected_outages_near(feeder_ids=feeder_ids, since=since):
        suspected_of[outage.feeder_id].append(outage)
    return {
        feeder_id: _suspected_sync(
            feeder_id,
            now,
            sockets=sockets_of[feeder_id],
            cuts_of={site: cuts_of[site] for site in sites_of.get(feeder_id, [])},
            suspected=suspected_of[feeder_id],
        )
        for feeder_id in sorted(feeder_ids)
    }


def _suspected_sync(
    feeder_id: int,
    now: datetime,
    *,
    sockets: dict,
    cuts_of: dict[int, list[SiteCut]],
    suspected: list[SuspectedOutage],
) -> bool:
    window = settings.OUTAGE_CORRELATION_WINDOW
    since = now - SUSPECTED_HORIZON
    cuts_of = defaultdict(list, cuts_of)
    drops = {s.pk: list(s.drops.all()) for s in suspected}
    known = {(d.site_id, d.dropped_at) for rows in drops.values() for d in rows}
    fresh = sorted(
        (sock.dropped_at, site_id)
        for site_id, sock in sockets.items()
        if sock.dropped_at is not None
        and sock.dropped_at >= since
        and (site_id, sock.dropped_at) not in known
        and not any(cut_spans(cut, sock.dropped_at) for cut in cuts_of[site_id])
    )
    changed = False
    alone = []
    for dropped_at, site_id in fresh:
        joined = _suspected_join(suspected, drops, site_id=site_id, dropped_at=dropped_at)
        if joined is None:
            alone.append(
                Member(
                    key=site_id,
                    unit=site_id,
                    started_at=dropped_at,
                    ended_at=None,
                    momentary=False,
                )
            )
        changed |= joined is not None
    for found in grid_outages(alone, window=window, min_units=settings.OUTAGE_MIN_GRID_SITES):
        created = SuspectedOutage.objects.create(feeder_id=feeder_id, started_at=found.started_at)
        at = {m.key: m.started_at for m in alone}
        drops[created.pk] = SuspectedSite.objects.bulk_create(
            SuspectedSite(suspected_outage=created, site_id=site, dropped_at=at[site])
            for site in found.members
        )
        suspected.append(created)
        changed = True
    cuts = [cut for site_cuts in cuts_of.values() for cut in site_cuts]
    for outage in suspected:
        changed |= _suspected_judge(outage, drops[outage.pk], sockets, cuts, now)
    if changed:
        message = live_event({"type": "suspected", "feeder": feeder_id})
        transaction.on_commit(lambda: group_send([fleet_group()], message))
    return changed


def _suspected_join(suspected, drops, *, site_id: int, dropped_at: datetime):
    """Add the site's drop to the first suspected outage (of those not including the site) whose
    drops would all still be within the window of each other; the outage, or None."""
    window = settings.OUTAGE_CORRELATION_WINDOW
    for outage in sorted(suspected, key=lambda o: (o.started_at, o.pk)):
        rows = drops[outage.pk]
        instants = [d.dropped_at for d in rows] + [dropped_at]
        if any(d.site_id == site_id for d in rows) or max(instants) - min(instants) > window:
            continue
        rows.append(
            SuspectedSite.objects.create(
                suspected_outage=outage, site_id=site_id, dropped_at=dropped_at
            )
        )
        if dropped_at < outage.started_at:
            outage.started_at = dropped_at
            outage.save(update_fields=["started_at", "updated_at"])
        return outage
    return None


def _suspected_judge(outage, rows, sockets, cuts, now: datetime) -> bool:
    """Note when its sites came back, and give it the status the instants say; whether changed."""
    for row in rows:
        sock = sockets.get(row.site_id)
        if row.back_at is None and sock and sock.back_at and sock.back_at >= row.dropped_at:
            row.back_at = sock.back_at
            row.save(update_fields=["back_at"])
    found = verdict(
        status=outage.status,
        resolved_at=outage.resolved_at,
        started_at=outage.started_at,
        back_at=[row.back_at for row in rows],
        cuts=cuts,
        window=settings.OUTAGE_CORRELATION_WINDOW,
        grace=settings.OUTAGE_SUSPECTED_GRACE,
        now=now,
    )
    values = {
        "status": found.status,
        "resolved_at": found.resolved_at,
        "grid_outage_id": found.grid_outage,
    }
    if all(getattr(outage, name) == value for name, value in values.items()):
        return False
    for name, value in values.items():
        setattr(outage, name, value)
    outage.save(update_fields=[*values, "updated_at"])
    return True


def suspected_outages_sweep(*, now: datetime | None = None) -> list[int]:
    """Mark every feeder with a suspected outage still open or a recent abrupt drop for the
    drain of suspected outages (one task, not one a feeder: after a storm, 25 of them held both
    worker processes while the sites' drain waited, bench/outages): dismisses the ones whose
    sites are back for the grace period, and catches drops whose drain was lost or that the
    silent-devices job found. Runs on beat; returns the feeders."""
    now = now or timezone.now()
    feeders = set(
        SuspectedOutage.objects.filter(status=SuspectedStatus.SUSPECTED).values_list(
            "feeder_id", flat=True
        )
    )
    feeders.update(registry.feeders_with_drops(since=now - SWEEP_DROPS_SINCE))
    _suspected_soon(sorted(feeders))
    return sorted(feeders)
