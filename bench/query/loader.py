"""Readings for the benchmark, loaded by binary COPY (psycopg `cursor.copy`) with a progress line.

1,000 sensors (see setup_data) report every 15 minutes from T0 (a UTC midnight): step k is the
instant T0 + 15 min x k, and the table holding `steps` steps has 1,000 x steps rows (1M rows =
1,000 steps = 10.4 days; 10M = 104 days; 50M = 521 days, ~1.4 years). Growing the table appends
steps after the last one, time-major (at each instant every sensor, as a fleet reports), so the
heap and the indexes get the layout that real ingestion gives them.

Rows go through the table's triggers like any insert: the foreign-key check and the
`energy_readings_mark_dirty` statement trigger, which marks every new quarter-hour in
`rollup_dirty` for the refresh job, exactly as the ingest writer's inserts do.

Values by sensor role (deterministic, so re-runs load the same data):
meter kWh per interval 0.05-0.55; power W 300-2,300; counter kWh cumulative, +0.21..0.39 a step.
"""

import struct
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.query.common import log

STEP = timedelta(minutes=15)
STEP_US = 15 * 60 * 1_000_000
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
_VALUE = struct.Struct(">d").pack


def value_fn(role: str, index: int):
    if role == "meter":
        return lambda step: 0.05 + ((index * 37 + step * 11) % 500) / 1000
    if role == "power":
        return lambda step: 300.0 + ((index * 37 + step * 11) % 2000)
    if role == "counter":
        return lambda step: index * 10.0 + step * 0.3 + ((index + step * 7) % 10) * 0.01
    raise ValueError(role)


class Loader:
    def __init__(self, conn, sensors: list[dict], t0: datetime):
        self.conn = conn
        self.sensors = sensors
        self.t0 = t0
        typ = conn.execute(
            "SELECT atttypid::regtype::text FROM pg_attribute "
            "WHERE attrelid = 'energy_readings'::regclass AND attname = 'sensor_id'"
        ).fetchone()[0]
        width = {"bigint": 8, "integer": 4}[typ]
        fmt = ">hiqi" if width == 8 else ">hiii"
        # Per sensor: field count, sensor_id (length, value), then the length of the time field.
        self.prefixes = [struct.pack(fmt, 3, width, s["id"], 8) for s in sensors]
        self.values = [value_fn(s["role"], i) for i, s in enumerate(sensors)]

    def time_of(self, step: int) -> datetime:
        return self.t0 + STEP * step

    def _chunk(self, first: int, steps: int) -> bytes:
        t0_us = int((self.t0 - PG_EPOCH).total_seconds()) * 1_000_000
        out: list[bytes] = []
        append = out.append
        eight = struct.pack(">i", 8)
        pairs = list(zip(self.prefixes, self.values, strict=True))
        for step in range(first, first + steps):
            tail = struct.pack(">q", t0_us + step * STEP_US) + eight
            for prefix, fn in pairs:
                append(prefix)
                append(tail)
                append(_VALUE(fn(step)))
        return b"".join(out)

    def load(
        self, first: int, steps: int, *, label: str, tx_steps: int = 250, chunk_steps: int = 50
    ) -> dict:
        """Append steps [first, first + steps): one COPY statement and transaction per
        `tx_steps` steps (250k rows), written `chunk_steps` steps at a time. The progress line
        (rows/s, ETA) counts committed rows only."""
        total = steps * len(self.sensors)
        done = 0
        started = time.monotonic()
        last_line = 0.0
        tty = sys.stderr.isatty()
        gen_s = 0.0
        for tx_first in range(first, first + steps, tx_steps):
            tx_n = min(tx_steps, first + steps - tx_first)
            with (
                self.conn.transaction(),
                self.conn.cursor() as cur,
                cur.copy(
                    "COPY energy_readings (sensor_id, time, value) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.write(COPY_HEADER)
                for c_first in range(tx_first, tx_first + tx_n, chunk_steps):
                    c_n = min(chunk_steps, tx_first + tx_n - c_first)
                    g0 = time.monotonic()
                    data = self._chunk(c_first, c_n)
                    gen_s += time.monotonic() - g0
                    copy.write(data)
                copy.write(COPY_TRAILER)
            done += tx_n * len(self.sensors)
            now = time.monotonic()
            if now - last_line >= (1.0 if tty else 10.0) or done == total:
                last_line = now
                el = now - started
                rate = done / el
                eta = (total - done) / rate
                line = (f"  load {label}: {done:,}/{total:,} rows ({100 * done / total:.0f}%)"
                        f"  {rate:,.0f} rows/s  ETA {eta:,.0f}s")  # fmt: skip
                if tty:
                    print(f"\r{time.strftime('%H:%M:%S')}{line}   ", end="", file=sys.stderr,
                          flush=True)  # fmt: skip
                else:
                    log(line)
        if tty:
            print(file=sys.stderr)
        seconds = time.monotonic() - started
        return {
            "rows": total,
            "steps": steps,
            "from": self.time_of(first).isoformat(),
            "to": self.time_of(first + steps).isoformat(),
            "seconds": round(seconds, 1),
            "rows_per_s": round(total / seconds),
            "python_generate_s": round(gen_s, 1),
        }
