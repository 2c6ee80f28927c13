"""Every write to the registry."""

import json
import secrets
import time
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from devices import selectors, socket_registry
from devices.groups import commands_group, fleet_group, site_group
from devices.models import Command, CommandStatus, Device, Room, Sensor, Site, hash_token
from devices.storable_text import storable_text
from energy_portal import metrics
from energy_portal.realtime import (
    compact_json,
    group_send,
    live_channel,
    live_event,
    live_send_each,
    watched_groups,
)
from energy_portal.redis_client import sync_client

TOKEN_BYTES = 32


@transaction.atomic
def device_create(
    *,
    uid: str,
    site: Site,
    kind: str = "pi",
    name: str = "",
    room: Room | None = None,
    controllable: bool = False,
    flexible_kw: Decimal = Decimal("0"),
    sensors: list[dict] | None = None,
) -> tuple[Device, str]:
    """Create a device (and optionally its sensors); return it with its token, shown only now."""
    device = Device(
        uid=uid,
        site=site,
        kind=kind,
        name=name,
        room=room,
        controllable=controllable,
        flexible_kw=flexible_kw,
    )
    device.full_clean(exclude=["token_hash"])
    token = device_issue_token(device=device)
    for spec in sensors or []:
        sensor_create(device=device, **spec)
    return device, token


def device_issue_token(*, device: Device) -> str:
    """Give the device a new token and save it; any old token stops working at once.

    Only a hash is stored, so the returned token must be shown to the caller now or never.
    A device not saved yet is saved with its first token.
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    device.token_hash = hash_token(token)
    device.token_rotated_at = timezone.now()
    if device.pk is None:
        device.save()
    else:
        device.save(update_fields=["token_hash", "token_rotated_at"])
    return token


def device_update(*, device: Device, **fields) -> Device:
    for name, value in fields.items():
        setattr(device, name, value)
    device.full_clean()
    device.save(update_fields=list(fields))
    return device


def sensor_create(*, device: Device, key: str, kind: str, unit: str = "") -> Sensor:
    sensor = Sensor(device=device, key=key, kind=kind, unit=unit)
    sensor.full_clean()
    sensor.save()
    return sensor


def _status_payload(device: Device) -> dict:
    return {
        "type": "status",
        "device": device.uid,
        "site": device.site_id,
        "online": device.online,
        "last_seen": device.last_seen.isoformat() if device.last_seen else None,
    }


@contextmanager
def _soft_state_write():
    """A transaction that commits without waiting for its WAL to reach the disk.

    For the online flag and last-seen instant only: every socket that opens or closes writes
    them, and the wait for the disk was about half of a handshake's time in connect()
    (bench/outages). The commit is as visible and as atomic as any; a crash of PostgreSQL itself
    may forget the last fraction of a second of them, which the device's next socket event and
    the silent-devices job set right. Inside a caller's transaction it changes nothing (that
    transaction may hold writes that must be durable)."""
    outer = connection.in_atomic_block
    with transaction.atomic():
        if not outer:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield


def device_connected(*, device: Device, at: datetime | None = None) -> list:
    """Record that the device's socket opened (online, seen `at`, default now), tell its viewers
    after commit, and return the ids of its open commands, oldest first, for the socket to
    deliver (`devices_connected` of one device)."""
    return devices_connected(connections=[(device, at or timezone.now())])[0]


def devices_connected(*, connections: list[tuple[Device, datetime]]) -> list[list]:
    """`device_connected` of many sockets at once (device, the instant its socket opened), as
    the handshakes of one server process make it together (`devices.batched`): one UPDATE for
    all the devices, one query for their open commands, their viewers told in one Redis round
    trip after commit. Returns each socket's open commands, in the order given.

    The sockets have joined their devices' groups before, so a command queued meanwhile is
    either read here or sent to the group.
    """
    if not connections:
        return []
    latest: dict[int, datetime] = {}
    for device, at in connections:
        latest[device.pk] = max(at, latest.get(device.pk, at))
    with _soft_state_write(), connection.cursor() as cursor:
        _lock_devices_in_order(cursor, list(latest))
        cursor.execute(
            "UPDATE devices_device AS d SET online = true, last_seen = v.at, "
            "online_since = v.at FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, at) "
            "WHERE d.id = v.id",
            [list(latest), list(latest.values())],
        )
    sends = []
    for device, _ in connections:
        at = latest[device.pk]
        device.online, device.last_seen, device.online_since = True, at, at
        groups = [site_group(device.site_id), fleet_group()]
        sends.append((groups, live_event(_status_payload(device))))
    transaction.on_commit(lambda: live_send_each(sends))
    commands = selectors.open_commands_of(device_ids=list(latest))
    return [list(commands.get(device.pk, [])) for device, _ in connections]


def devices_disconnected(*, leaving: list[tuple[Device, datetime, bool]]) -> list[None]:
    """`device_set_online(online=False)` of many sockets that ended (device, the instant of its
    last sign of life, whether it ended abruptly), as one server process's sockets closing
    together do (`devices.batched`): the registry asked once for all (a device another socket
    holds stays online), one UPDATE, the viewers told in one Redis round trip after commit; the
    abrupt ends are then noted for suspected outages (`outages.services.sockets_drop_record`).
    """
    from outages.services import sockets_drop_record  # outages' services import devices'

    if not leaving:
        return []
    ids = list(dict.fromkeys(device.pk for device, _, _ in leaving))
    held = sync_client().hmget(socket_registry.SOCKETS_KEY, ids)
    free = {device_id for device_id, channel in zip(ids, held, strict=True) if channel is None}
    gone: dict[int, tuple[Device, datetime, bool]] = {}
    for device, at, abrupt in leaving:
        if device.pk in free:
            gone[device.pk] = (device, at, abrupt)
    if gone:
        rows = list(gone.values())
        with _soft_state_write(), connection.cursor() as cursor:
            _lock_devices_in_order(cursor, list(gone))
            cursor.execute(
                "UPDATE devices_device AS d SET online = false, last_seen = v.at, "
                "online_since = NULL, dropped_at = v.dropped_at "
                "FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) "
                "AS v(id, at, dropped_at) WHERE d.id = v.id",
                [
                    [device.pk for device, _, _ in rows],
                    [at for _, at, _ in rows],
                    [at if abrupt else None for _, at, abrupt in rows],
                ],
            )
        sends = []
        for device, at, abrupt in rows:
            device.online, device.last_seen, device.online_since = False, at, None
            device.dropped_at = at if abrupt else None
            groups = [site_group(device.site_id), fleet_group()]
            sends.append((groups, live_event(_status_payload(device))))
        transaction.on_commit(lambda: live_send_each(sends))
    sockets_drop_record(site_ids=sorted({d.site_id for d, _, abrupt in leaving if abrupt}))
    return [None] * len(leaving)


def device_set_online(
    *, device_id: int, online: bool, at: datetime | None = None, abrupt: bool = False
) -> Device:
    """Record that a device's socket opened or closed (at `at`, default now), and tell its
    viewers after commit. A socket that ended `abrupt`ly (no close frame, or silent: the home
    may have lost its mains) keeps `at` as the device's drop instant; a clean end clears it.

    Going offline is skipped when another socket of the device has registered meanwhile (it
    reconnected while the old socket was closing), so the newer state wins.
    """
    device = Device.objects.get(pk=device_id)
    if not online and sync_client().hexists(socket_registry.SOCKETS_KEY, device_id):
        return device
    device.online = online
    device.last_seen = at or timezone.now()
    if online:
        device.online_since = device.last_seen
    else:
        device.online_since = None
        device.dropped_at = device.last_seen if abrupt else None
    with _soft_state_write():
        device.save(update_fields=["online", "last_seen", "online_since", "dropped_at"])
    message = live_event(_status_payload(device))
    groups = [site_group(device.site_id), fleet_group()]
    transaction.on_commit(lambda: group_send(groups, message))
    return device


def devices_record_last_seen(*, seen: dict[int, datetime]) -> int:
    """Copy signs of life gathered in Redis into the database in one statement; a device's
    `last_seen` only moves forward. The instants travel as arrays: a CASE of a WHEN per device
    cost 1.3 s of CPU for 5,000 devices to build and send, every flush (bench/outages)."""
    if not seen:
        return 0
    ids = list(seen)
    with transaction.atomic(), connection.cursor() as cursor:
        _lock_devices_in_order(cursor, ids)
        cursor.execute(
            "UPDATE devices_device AS d SET last_seen = v.at "
            "FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, at) "
            "WHERE d.id = v.id AND (d.last_seen IS NULL OR d.last_seen < v.at)",
            [ids, [seen[device_id] for device_id in ids]],
        )
        return cursor.rowcount


COMMAND_ARGS = {
    # name: validator of args, returning an error message or None
    "ping": lambda args: None if not args else "ping takes no args",
    # With the event whose curtailment it lifts, so a Pi ignores one arriving after the next.
    "restore": lambda args: (
        None
        if not args or (set(args) == {"event"} and type(args["event"]) is int)
        else 'restore takes no args or {"event": <id>}'
    ),
    "relay": lambda args: (
        None
        if set(args) == {"state"} and args["state"] in ("on", "off")
        else 'relay takes {"state": "on"} or {"state": "off"}'
    ),
    "curtail": lambda args: (
        None
        if (
            set(args) == {"kw"}
            and isinstance(args["kw"], int | float)
            and not isinstance(args["kw"], bool)
            and 0 <= args["kw"] <= 1000
        )
        # A demand-response event's: its id, the level (0-3) and the end (ISO 8601).
        or (
            set(args) == {"event", "level", "until"}
            and type(args["event"]) is int
            and args["level"] in (0, 1, 2, 3)
            and type(args["level"]) is int
            and isinstance(args["until"], str)
        )
        else 'curtail takes {"kw": <reduction in kW, 0 to 1000>} or '
        '{"event": <id>, "level": <0 to 3>, "until": <ISO 8601 instant>}'
    ),
    # Demos and tests only: a simulated Pi cuts its simulated mains; a real one rejects it.
    "simulate_mains": lambda args: (
        None
        if args == {"state": "restored"}
        or (
            set(args) == {"state", "minutes"}
            and args["state"] == "lost"
            and isinstance(args["minutes"], int | float)
            and not isinstance(args["minutes"], bool)
            and 0 < args["minutes"] <= 24 * 60
        )
        else 'simulate_mains takes {"state": "lost", "minutes": <0 to 1440>} '
        'or {"state": "restored"}'
    ),
}
DEFAULT_COMMAND_TTL = timedelta(minutes=10)


def _command_payload(command: Command) -> dict:
    return {
        "type": "command",
        "id": str(command.id),
        "device": command.device.uid,
        "name": command.name,
        "args": command.args,
        "status": command.status,
        "detail": command.detail,
    }


def _command_changed(command: Command) -> None:
    message = live_event(_command_payload(command))
    groups = [site_group(command.device.site_id), fleet_group()]
    transaction.on_commit(lambda: group_send(groups, message))


def _command_args(name: str, args: dict | None) -> dict:
    """The command's arguments, checked: a `ValidationError` names `name` or `args`."""
    args = args or {}
    check = COMMAND_ARGS.get(name)
    if check is None:
        known = ", ".join(sorted(COMMAND_ARGS))
        raise ValidationError({"name": f"Unknown command {name!r}; known commands: {known}."})
    if error := check(args):
        raise ValidationError({"args": error})
    return args


def command_issue(
    *,
    device: Device,
    name: str,
    args: dict | None = None,
    ttl: timedelta = DEFAULT_COMMAND_TTL,
    user=None,
) -> Command:
    """Queue a command for a device; its socket gets it now if online, else on reconnect."""
    args = _command_args(name, args)
    command = Command.objects.create(
        device=device, name=name, args=args, created_by=user, expires_at=timezone.now() + ttl
    )
    entries = [command_entry(command)]
    transaction.on_commit(lambda: commands_publish(entries))
    _command_changed(command)
    return command


def _frame_maker(name: str, args: dict, expires_at: datetime):
    """`command_id -> frame` for commands alike but for their id: the frame's text around the
    id is encoded once (thousands of an event's commands differ only by it)."""
    head = '{"type": "command", "id": "'
    tail = (
        f'", "name": {json.dumps(name)}, "args": {json.dumps(args)}, '
        f'"expires_at": {json.dumps(expires_at.isoformat())}}}'
    )
    return lambda command_id: f"{head}{command_id}{tail}"


def command_frame(command: Command) -> str:
    """The command as its device's socket receives it (a JSON text frame: type, id, name,
    args, expires_at)."""
    return _frame_maker(command.name, command.args, command.expires_at)(command.id)


def command_message(command: Command) -> dict:
    """A channel-layer message telling the device's socket (on its channel, which
    `socket_registry` names) of a new command, as the portal sent them before
    `commands_publish`: it carries the frame, so the socket writes it at once and records "sent"
    later, in bulk (`commands_mark_sent`). A message without the frame makes the socket claim
    the command from the database first."""
    return {
        "type": "device.command",
        "id": str(command.id),
        "frame": command_frame(command),
        "expires": command.expires_at.timestamp(),
    }


def command_entry(command: Command) -> list:
    """The command as the server processes' inboxes get it (`devices.command_inbox`): device
    id, command id, the frame its socket writes, and when it expires (epoch seconds)."""
    return [
        command.device_id,
        str(command.id),
        command_frame(command),
        command.expires_at.timestamp(),
    ]


COMMANDS_PER_MESSAGE = 500  # a frame is ~250 bytes: ~125 kB a published message


def commands_publish(entries: list[list]) -> None:
    """Tell every server process of these commands (`command_entry`), once committed: one
    PUBLISH per `COMMANDS_PER_MESSAGE` of them, all in one Redis round trip. Each process hands
    those of its own device sockets to them (`devices.command_inbox`); a device connected
    nowhere gets its command on its next socket."""
    if not entries:
        return
    channel = live_channel(commands_group())
    pipe = sync_client().pipeline(transaction=False)
    for first in range(0, len(entries), COMMANDS_PER_MESSAGE):
        pipe.publish(channel, compact_json(entries[first : first + COMMANDS_PER_MESSAGE]))
    pipe.execute()


def commands_issue(
    *,
    device_ids: Iterable[int],
    name: str,
    args: dict | None = None,
    ttl: timedelta = DEFAULT_COMMAND_TTL,
    expires_at: datetime | None = None,
) -> dict[int, uuid.UUID]:
    """`command_issue` for many devices at once (the same command to each; ids of devices that
    do not exist are skipped): one INSERT … SELECT, and once committed one Redis round trip
    telling every server process of them all (`commands_publish`) and one or two for the live
    viewers. They expire at `expires_at`, default `ttl` from now. Returns each device's new
    command id.

    Set-based because a demand-response event issues thousands in the second of its start:
    building and saving them as models took most of that second (bench/dr)."""
    args = _command_args(name, args)
    now = timezone.now()
    expires_at = expires_at or now + ttl
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH issued AS (
                INSERT INTO devices_command
                    (id, device_id, name, args, status, detail, created_at, expires_at)
                SELECT gen_random_uuid(), d.id, %s, %s::jsonb, %s, '', %s, %s
                FROM devices_device d WHERE d.id = ANY(%s)
                RETURNING id, device_id
            )
            SELECT issued.id, issued.device_id, d.uid, d.site_id
            FROM issued JOIN devices_device d ON d.id = issued.device_id
            ORDER BY issued.device_id
            """,
            [name, json.dumps(args), CommandStatus.PENDING, now, expires_at, list(device_ids)],
        )
        rows = cursor.fetchall()
    frame = _frame_maker(name, args, expires_at)
    expires = expires_at.timestamp()
    entries = [[device_id, str(id_), frame(id_), expires] for id_, device_id, _, _ in rows]

    def send() -> None:
        commands_publish(entries)  # the devices first: the viewers can wait
        pending = CommandStatus.PENDING
        _commands_tell([(id_, uid, site, name, args, pending, "") for id_, _, uid, site in rows])

    transaction.on_commit(send)
    return {device_id: id_ for id_, device_id, _, _ in rows}


def command_mark_sent(*, command_id, device_id: int) -> Command | None:
    """Claim an open command for delivery to the device's socket; None if it is not deliverable
    (another device's, already finished, or expired — which is then recorded)."""
    command = (
        Command.objects.select_related("device")
        .filter(pk=command_id, device_id=device_id, status__in=Command.OPEN_STATUSES)
        .first()
    )
    if command is None:
        return None
    now = timezone.now()
    if command.expires_at <= now:
        command.status, command.completed_at = CommandStatus.EXPIRED, now
        command.save(update_fields=["status", "completed_at"])
        _command_changed(command)
        metrics.command_outcome_counted(CommandStatus.EXPIRED)
        return None
    command.status, command.sent_at = CommandStatus.SENT, now
    command.save(update_fields=["status", "sent_at"])
    _command_changed(command)
    return command


def commands_mark_sent(*, command_ids: list, at: datetime | None = None) -> int:
    """Record that these commands' frames were written to their sockets (`at`, default now), in
    one statement, and tell the viewers after commit. The sockets send a command's frame as soon
    as its channel message arrives and gather the ids for this (`devices.consumers.SentMarks`).

    Only a command not yet marked sent gets `sent_at`; only a pending one becomes sent (the
    device may have answered already: done stays done). Returns how many were marked."""
    if not command_ids:
        return 0
    at = at or timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        _lock_in_order(cursor, command_ids)
        cursor.execute(
            """
            UPDATE devices_command c
            SET sent_at = %s,
                status = CASE WHEN c.status = %s THEN %s ELSE c.status END
            FROM devices_device d
            WHERE c.id = ANY(%s::uuid[]) AND c.sent_at IS NULL AND d.id = c.device_id
            RETURNING c.id, d.uid, d.site_id, c.name, c.args, c.status, c.detail
            """,
            [at, CommandStatus.PENDING, CommandStatus.SENT, [str(i) for i in command_ids]],
        )
        rows = cursor.fetchall()
    _commands_changed(rows)
    return len(rows)


def _lock_in_order(cursor, command_ids: list) -> None:
    """Lock these commands' rows in the order of their ids. The batches of sent marks and of
    results of one process run in threads of their own and update the same commands (a
    device answers as soon as its command arrives): each updating its rows in its own order,
    two deadlocked (bench/dr)."""
    cursor.execute(
        "SELECT id FROM devices_command WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE",
        [[str(i) for i in command_ids]],
    )


def _lock_devices_in_order(cursor, device_ids: list[int]) -> None:
    """Lock these devices' rows in the order of their ids, before a batch updates them: the
    handshakes and socket ends of several server processes and the last-seen copy each update
    many devices at once, and two batches sharing devices (a Pi reconnecting to the other
    process while its old socket closes) would otherwise deadlock, each holding some rows the
    other waits for.

    FOR NO KEY UPDATE, the lock the updates themselves take (they change no key): it leaves
    alone the key-share locks with which rows referring to a device check it exists at commit.
    FOR UPDATE blocked them, and a batch of power reports (its checks in the order of its rows)
    deadlocked with the last-seen copy of the whole fleet (in id order) in a storm: its sockets
    were closed with 1011 and their reports not stored until resent (bench/outages)."""
    cursor.execute(
        "SELECT id FROM devices_device WHERE id = ANY(%s::bigint[]) ORDER BY id FOR NO KEY UPDATE",
        [sorted(device_ids)],
    )


def _commands_changed(rows: list[tuple]) -> None:
    """Tell the viewers, after commit, of the commands of `rows` (id, device uid, site, name,
    args, status, detail) as they now are."""
    transaction.on_commit(
        lambda: _commands_tell(
            [
                (command_id, uid, site_id, name,
                 json.loads(args) if isinstance(args, str) else args, status, detail)
                for command_id, uid, site_id, name, args, status, detail in rows
            ]
        )
    )  # fmt: skip


def _commands_tell(rows: list[tuple]) -> None:
    """Live messages for the commands of `rows` (id, device uid, site, name, args, status,
    detail) to their site's group and the fleet, only where someone watches: a batch of
    thousands (an event's) encodes none for the groups nobody watches."""
    fleet = fleet_group()
    watched = set(watched_groups.among_sync([*{site_group(row[2]) for row in rows}, fleet]))
    live = []
    for command_id, uid, site_id, name, args, status, detail in rows:
        if groups := [g for g in (site_group(site_id), fleet) if g in watched]:
            payload = {"type": "command", "id": str(command_id), "device": uid, "name": name,
                       "args": args, "status": status, "detail": detail}  # fmt: skip
            live.append((groups, live_event(payload)))
    live_send_each(live)


COMMAND_RESULTS = frozenset({CommandStatus.DONE, CommandStatus.FAILED, CommandStatus.REJECTED})


@transaction.atomic
def commands_complete(*, results: list[tuple], at: datetime | None = None) -> set[str]:
    """Record devices' results for commands they were sent, in one statement: `results` are
    (command id, device id, status, detail), each status one of `COMMAND_RESULTS`. As
    `command_complete` one by one (the details made storable and cut at 2000 characters; a
    command already final keeps its result; the viewers told after commit), for the sockets'
    batches (`devices.command_results`). Returns the ids (text) of those that are commands of
    their device: any other was not recorded."""
    if not results:
        return set()
    if unknown := {status for _, _, status, _ in results} - COMMAND_RESULTS:
        raise ValueError(f"not a command result: {sorted(unknown)}")
    at = at or timezone.now()
    ids = [str(command_id) for command_id, _, _, _ in results]
    devices = [device_id for _, device_id, _, _ in results]
    with connection.cursor() as cursor:
        _lock_in_order(cursor, ids)
        cursor.execute(
            """
            WITH v AS (
                SELECT DISTINCT ON (id) *
                FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::text[])
                    AS v(id, device_id, status, detail)
            )
            UPDATE devices_command c
            SET status = v.status, detail = v.detail, completed_at = %s
            FROM v, devices_device d
            WHERE c.id = v.id AND c.device_id = v.device_id AND c.status = ANY(%s)
              AND d.id = c.device_id
            RETURNING c.id, d.uid, d.site_id, c.name, c.args, c.status, c.detail
            """,
            [ids, devices, [str(status) for _, _, status, _ in results],
             [storable_text(detail[:2000]) for _, _, _, detail in results],
             at, list(Command.OPEN_STATUSES)],
        )  # fmt: skip
        rows = cursor.fetchall()
        cursor.execute(
            """
            SELECT c.id FROM devices_command c
            JOIN unnest(%s::uuid[], %s::bigint[]) AS v(id, device_id)
              ON c.id = v.id AND c.device_id = v.device_id
            """,
            [ids, devices],
        )
        found = {str(command_id) for (command_id,) in cursor.fetchall()}
    _commands_changed(rows)
    for row in rows:
        metrics.command_outcome_counted(row[5])
    return found


def command_complete(*, command_id, device_id: int, status: str, detail: str = "") -> Command:
    """Record the device's result for a command it was sent. `detail` is the device's own text:
    what PostgreSQL cannot store (NUL, lone surrogates) is replaced, and it is cut at 2000
    characters."""
    if status not in COMMAND_RESULTS:
        raise ValidationError({"status": "status must be done, failed or rejected"})
    command = (
        Command.objects.select_related("device").filter(pk=command_id, device_id=device_id).first()
    )
    if command is None:
        raise ValidationError({"id": "no such command for this device"})
    if command.status in Command.OPEN_STATUSES:
        command.status, command.detail = status, storable_text(detail[:2000])
        command.completed_at = timezone.now()
        command.save(update_fields=["status", "detail", "completed_at"])
        _command_changed(command)
        metrics.command_outcome_counted(status)
    return command


def commands_expire(*, now: datetime | None = None) -> int:
    """Mark open commands past their expiry as expired."""
    now = now or timezone.now()
    expired = list(
        Command.objects.select_related("device").filter(
            status__in=Command.OPEN_STATUSES, expires_at__lte=now
        )
    )
    for command in expired:
        command.status, command.completed_at = CommandStatus.EXPIRED, now
        command.save(update_fields=["status", "completed_at"])
        _command_changed(command)
        metrics.command_outcome_counted(CommandStatus.EXPIRED)
    return len(expired)


def _epoch(at: datetime | None) -> float:
    return at.timestamp() if at else 0.0


def devices_mark_silent_offline(*, now: float | None = None) -> int:
    """Mark offline the devices still shown online whose socket has shown no life for twice the
    heartbeat timeout: the server holding it died, so its own watchdog never ran."""
    now = now or time.time()
    limit = settings.DEVICE_HEARTBEAT_TIMEOUT * 2
    online = dict(Device.objects.filter(online=True).values_list("id", "last_seen"))
    if not online:
        return 0
    ids = list(online)
    client = sync_client()
    noted = client.hmget(socket_registry.LAST_SEEN_KEY, ids)
    # The latest of Redis' note and the database's: a socket's notes reach Redis about a second
    # after they are taken (socket_registry.SeenNotes), and going online writes the database at
    # once, so a device that just connected has no note yet but is not silent.
    last_life = {
        device_id: max(float(at) if at else 0.0, _epoch(online[device_id]))
        for device_id, at in zip(ids, noted, strict=True)
    }
    silent = [device_id for device_id, at in last_life.items() if now - at > limit]
    for device_id in silent:
        client.hdel(socket_registry.SOCKETS_KEY, device_id)
        # Its socket went without a close: a drop, at its last sign of life (see outages'
        # suspected outages, which the outages sweep looks for).
        device_set_online(
            device_id=device_id,
            online=False,
            at=datetime.fromtimestamp(last_life[device_id], tz=UTC),
            abrupt=True,
        )
    return len(silent)
