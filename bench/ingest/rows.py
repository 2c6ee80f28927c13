"""The benchmark's rows, in every shape a measurement needs.

A row set is `steps` time steps of all sensors, time-major (at each instant every sensor reports,
as a fleet does): row i is sensor `i % S` at time `base + (first_step + i // S) * STEP_US`. The
value is a function of the sensor and the step. The same (first_step, steps) gives the same rows
in every shape: binary COPY data, writer stream entries, HTTP items.
"""

import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime

STEP_US = 1_000_000  # one reading per sensor per second
PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 UTC, the epoch of binary timestamptz

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
COPY_COLUMNS = "(sensor_id, time, value)"


def value_of(sensor_index: int, step: int) -> float:
    return ((sensor_index * 37 + step * 11) % 50_000) / 10 + 0.25


class RowSet:
    def __init__(self, sensor_ids: list[int], base_us: int, first_step: int, steps: int):
        self.sensor_ids = sensor_ids
        self.base_us = base_us
        self.first_step = first_step
        self.steps = steps

    def __len__(self) -> int:
        return self.steps * len(self.sensor_ids)

    def time_us(self, step: int) -> int:
        return self.base_us + step * STEP_US

    @property
    def start_us(self) -> int:
        return self.time_us(self.first_step)

    @property
    def end_us(self) -> int:
        """First instant after the set."""
        return self.time_us(self.first_step + self.steps)

    def step_range(self) -> range:
        return range(self.first_step, self.first_step + self.steps)

    def tuples(self) -> Iterator[tuple[int, int, float]]:
        for step in self.step_range():
            us = self.time_us(step)
            for index, sensor_id in enumerate(self.sensor_ids):
                yield sensor_id, us, value_of(index, step)

    # -- binary COPY ------------------------------------------------------------------------

    def copy_chunks(self, sensor_type: str, steps_per_chunk: int = 100) -> Iterator[bytes]:
        """PostgreSQL binary COPY data (header, tuples, trailer) for columns COPY_COLUMNS, in
        chunks of `steps_per_chunk` steps. `sensor_type` is 'int4' or 'int8' (sensor_id's type)."""
        if sensor_type == "int8":
            prefixes = [struct.pack(">hiqi", 3, 8, sid, 8) for sid in self.sensor_ids]
        else:
            prefixes = [struct.pack(">hiii", 3, 4, sid, 8) for sid in self.sensor_ids]
        tail = struct.Struct(">qid").pack  # time, length of value, value
        yield COPY_HEADER
        chunk: list[bytes] = []
        for n, step in enumerate(self.step_range(), 1):
            pg_us = self.time_us(step) - PG_EPOCH_US
            for index, prefix in enumerate(prefixes):
                chunk.append(prefix)
                chunk.append(tail(pg_us, 8, value_of(index, step)))
            if n % steps_per_chunk == 0:
                yield b"".join(chunk)
                chunk = []
        if chunk:
            yield b"".join(chunk)
        yield COPY_TRAILER

    def copy_data(self, sensor_type: str) -> bytes:
        return b"".join(self.copy_chunks(sensor_type))

    def copy_batches(self, sensor_type: str, rows_per_batch: int) -> list[bytes]:
        """Whole COPY streams of about `rows_per_batch` rows each (whole steps)."""
        steps = max(1, rows_per_batch // len(self.sensor_ids))
        out = []
        for first in range(self.first_step, self.first_step + self.steps, steps):
            n = min(steps, self.first_step + self.steps - first)
            out.append(RowSet(self.sensor_ids, self.base_us, first, n).copy_data(sensor_type))
        return out

    # -- writer stream entries --------------------------------------------------------------

    def array_literal(self) -> str:
        """The writer's statement parameter (telemetry.services.readings_insert_rows)."""
        return "{" + ",".join(f"{{{s},{us},{v!r}}}" for s, us, v in self.tuples()) + "}"

    def stream_entries(self, rows_per_entry: int = 500, src: str = "bench") -> Iterator[dict]:
        """Entries shaped like the pipeline's: {"src": ..., "rows": "[[sensor_id, us, value]..]"}"""
        rows: list[list] = []
        for sensor_id, us, value in self.tuples():
            rows.append([sensor_id, us, value])
            if len(rows) == rows_per_entry:
                yield {"src": src, "rows": json.dumps(rows, separators=(",", ":"))}
                rows = []
        if rows:
            yield {"src": src, "rows": json.dumps(rows, separators=(",", ":"))}


def rfc3339(us: int) -> str:
    """Seconds precision when whole, else microseconds; always Z."""
    dt = datetime.fromtimestamp(us / 1_000_000, UTC)
    if us % 1_000_000 == 0:
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
