"""`.sgl_v2` parse-and-enqueue: a generated file through `telemetry.ftp_ingest.ftp_file_ingest`.

The file has one header, `records` reading records and the trailer, lines padded to 100
characters with LF endings, like the SA4CPS samples: the CPEs of the benchmark's sites (each site
has its meter sensor already, so no device is created while timing), each CPE's 15-minute
intervals in time order (a CPE's block after another's, as the samples are sorted), local times
of Europe/Lisbon, starting at a local midnight about `records / CPEs / 96 + 2` days ago.

The timed call is exactly what the FTP poll does with a downloaded file: checksum, file record,
parse, CPE -> meter sensor, validate, live broadcast and XADD to the ingest stream, in chunks of
`CHUNK_ROWS`. A second, instrumented call (timers wrapped around the pipeline's functions in this
process only) says where the time goes.
"""

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

LINE = 100


def make_file(cpes: list[str], records: int, tz: str = "Europe/Lisbon") -> tuple[bytes, dict]:
    per_cpe = -(-records // len(cpes))
    zone = ZoneInfo(tz)
    days = per_cpe // 96 + 2
    local_start = (datetime.now(zone) - timedelta(days=days)).replace(
        hour=0, minute=0, second=0, microsecond=0, tzinfo=None
    )
    start = local_start.replace(tzinfo=zone).astimezone(UTC)
    # Local date+time text of each interval (UTC instants every 15 min, shown in local time).
    stamps = []
    for i in range(per_cpe):
        local = (start + timedelta(minutes=15 * i)).astimezone(zone)
        stamps.append(local.strftime("%Y%m%d%H%M"))
    lines = [f"00{'BENCH':<10}{local_start:%Y%m%d}0001".ljust(LINE)]
    n = 0
    pad = " " * (LINE - 45)
    for c, cpe in enumerate(cpes):
        head = f"20{cpe:<20}"
        for i, stamp in enumerate(stamps):
            if n == records:
                break
            energy = (c * 7 + i * 3) % 400 + 1
            lines.append(f"{head}{stamp}{energy:010d}{'E' if i % 97 == 0 else 'R'}{pad}")
            n += 1
    lines.append(f"99{'TOTAL':<10}{n:08d}".ljust(LINE))
    data = ("\n".join(lines) + "\n").encode("latin-1")
    return data, {"records": n, "cpes": len(cpes), "bytes": len(data), "first_local": stamps[0]}


ENQUEUE = "enqueue (readings_ingest, all)"
# What the instrumented run times; names missing from the project's current code are skipped
# (and listed). Indented labels are parts of the stage above them.
LIVE = "  enqueue: live broadcast (async_to_sync hop + group_send)"
STAGES = [
    ("ftp_ingest", "parse_sgl_rows", "parse (sgl_parser.parse_sgl_rows)", "call"),
    ("ftp_ingest", "_meter_refs", "CPE -> meter sensors (_meter_refs)", "call"),
    ("ftp_ingest", "_chunks", "items built (ftp_ingest._chunks)", "generator"),
    ("ftp_ingest", "readings_validate", "validate (readings_validate)", "call"),
    ("ftp_ingest", "readings_ingest", ENQUEUE, "call"),
    ("services", "_summary_messages", "  enqueue: live messages built", "call"),
    ("services", "_point_messages", "  enqueue: live messages built", "call"),
    ("services", "async_to_sync", LIVE, "factory"),
    ("services", "group_send", LIVE, "call"),
    ("services", "_stream_entries", "  enqueue: stream entry JSON (_stream_entries)", "call"),
]


class _Timers:
    """Wrap functions named in a module's namespace with accumulating timers (this process only)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.missing: list[str] = []
        self._undo: list = []

    def wrap(self, module, name: str, label: str, kind: str = "call") -> bool:
        """kind: "call" (a function), "generator" (time inside its steps), "factory" (a function
        returning a callable, e.g. async_to_sync: time the calls of what it returns)."""
        original = getattr(module, name, None)
        if original is None:
            self.missing.append(f"{module.__name__}.{name}")
            return False
        seconds, calls = self.seconds, self.calls

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - t0
                calls[label] += 1

        def timed_generator(*args, **kwargs):
            iterator = original(*args, **kwargs)
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    seconds[label] += time.perf_counter() - t0
                calls[label] += 1
                yield item

        def timed_factory(*args, **kwargs):
            made = original(*args, **kwargs)

            def call(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return made(*a, **kw)
                finally:
                    seconds[label] += time.perf_counter() - t0
                    calls[label] += 1

            return call

        wrapper = {"call": timed, "generator": timed_generator, "factory": timed_factory}[kind]
        setattr(module, name, wrapper)
        self._undo.append((module, name, original))
        return True

    def restore(self) -> None:
        for module, name, original in reversed(self._undo):
            setattr(module, name, original)
        self._undo.clear()


def run(
    *,
    source_id: int,
    data: bytes,
    redis_client,
    stream: str,
    instrument: bool,
) -> dict:
    """One ftp_file_ingest of `data` under a new name; the stream is emptied afterwards."""
    from telemetry import ftp_ingest, services
    from telemetry.models import FtpSource, IngestedFile

    module_of = {"ftp_ingest": ftp_ingest, "services": services}
    source = FtpSource.objects.get(pk=source_id)
    IngestedFile.objects.filter(source=source).delete()
    redis_client.delete(stream)
    timers = _Timers()
    if instrument:
        for module, name, label, kind in STAGES:
            timers.wrap(module_of[module], name, label, kind)
    name = f"bench-{time.time_ns()}.sgl_v2"
    try:
        started = time.perf_counter()
        record = ftp_ingest.ftp_file_ingest(source=source, name=name, data=data)
        seconds = time.perf_counter() - started
    finally:
        timers.restore()
    entries = redis_client.xlen(stream)
    redis_client.delete(stream)
    result = {
        "status": str(record.status),
        "rows": record.rows,
        "errors": record.errors[:3],
        "seconds": round(seconds, 3),
        "records_per_s": round(record.rows / seconds) if seconds else None,
        "stream_entries": entries,
    }
    if instrument:
        stages = dict(timers.seconds)
        if ENQUEUE in stages:
            inner = sum(v for k, v in stages.items() if k.startswith("  "))
            stages["  enqueue: XADD and the rest"] = stages[ENQUEUE] - inner
        accounted = sum(v for k, v in stages.items() if not k.startswith("  "))
        stages["other (checksum, file record, transaction, loop)"] = seconds - accounted
        result["stages_s"] = {k: round(v, 3) for k, v in stages.items()}
        result["stage_calls"] = dict(timers.calls)
        result["not_instrumented"] = timers.missing
    IngestedFile.objects.filter(source=source).delete()
    return result
