"""What-if variants (pipeline config suffix `fast`): the proposed changes, patched in at start-up in
the benchmark's own server and writer processes only. The portal's code is not changed; the exact
diffs proposed for it are in README.md.

- Server: `readings_ingest` first asks Redis, in one round trip, which of the batch's groups (its
  sites' and the fleet's) have anyone listening (core layer: ZCARD of each group's member set;
  pub/sub layer: PUBSUB NUMSUB of the group channels), then builds and sends live messages only
  for those. Today every batch builds and JSON-encodes one message per device and sends it to
  two groups (`group_send` = two Redis round trips even for a group nobody watches) while the
  sync view thread waits in `async_to_sync`. The benchmark has no viewers, so this shows the
  most the change can save; with a viewer on every site and on the fleet it saves nothing (and
  costs one round trip). A viewer joining between the check and the send misses that batch, as
  if it had joined a moment later.
- Writer: `readings_insert` binds the three arrays in binary through a server-side-binding
  psycopg cursor on the same connection (same transaction). Django's cursor is a psycopg
  `ClientCursor`, which renders each 20,000-element array as literal text in Python
  (`ListDumper`, about half of the writer's CPU).

    python -m daphne ... bench.ingest.patched_asgi:application   # the patched server
    python -m bench.ingest.patched_writer --max-rows ... --name ...  # the patched writer
"""

_BINARY_INSERT = None


def _listened(groups: list[str]) -> set[str]:
    from channels.layers import get_channel_layer
    from channels_redis.core import RedisChannelLayer

    from energy_portal.redis_client import sync_client

    layer = get_channel_layer()
    if isinstance(layer, RedisChannelLayer):  # core layer: one sorted set of members per group
        pipe = sync_client().pipeline(transaction=False)
        for group in groups:
            pipe.zcard(layer._group_key(group))
        counts = pipe.execute()
    else:  # pub/sub layer: subscribers of each group's channel (RedisPubSubLoopLayer's naming)
        prefix = layer._kwargs.get("prefix", "asgi")
        names = [f"{prefix}__group__{group}" for group in groups]
        counts = [n for _name, n in sync_client().pubsub_numsub(*names)]
    return {group for group, n in zip(groups, counts, strict=True) if n}


def _readings_ingest_listened(*, result, source: str, live: str = "points") -> None:
    from asgiref.sync import async_to_sync

    from devices.groups import fleet_group, site_group
    from energy_portal.redis_client import sync_client
    from telemetry import services

    readings = result.readings
    if not readings:
        return
    fleet = fleet_group()
    sites = {r.sensor.site_id for r in readings}
    listened = _listened([fleet, *(site_group(s) for s in sites)])
    if listened:
        if fleet not in listened:
            readings = [r for r in readings if site_group(r.sensor.site_id) in listened]
        build = services._summary_messages if live == "summary" else services._point_messages
        messages = [
            ([g for g in groups if g in listened], message)
            for groups, message in (
                build(readings, source) if live == "summary" else build(readings)
            )
        ]
        async_to_sync(services._send_all)(messages)
    pipe = sync_client().pipeline(transaction=False)
    for entry in services._stream_entries(result.readings, source):
        pipe.xadd(services.INGEST_STREAM, entry)
    pipe.execute()


def _readings_insert_binary(*, sensor_ids, times_us, values) -> int:
    import psycopg

    from django.db import connection

    if not sensor_ids:
        return 0
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_BINARY_INSERT, [sensor_ids, times_us, values])
        return cursor.rowcount


def patch_server() -> None:
    from telemetry import apis, services

    services.readings_ingest = _readings_ingest_listened
    apis.readings_ingest = _readings_ingest_listened


def patch_writer() -> None:
    global _BINARY_INSERT
    from telemetry import services, writer

    _BINARY_INSERT = services._INSERT_BATCH.replace("%s::", "%b::")
    assert _BINARY_INSERT.count("%b::") == 3, "the writer's statement changed; update patched.py"
    services.readings_insert = _readings_insert_binary
    writer.readings_insert = _readings_insert_binary
