"""The batch writer: empties the Redis ingest stream into `energy_readings`.

It reads the stream as a member of a consumer group, so several writers share the work and
each entry goes to one of them. A batch is bounded by rows (an entry is never split: one larger
than the bound makes a batch of its own) and by age; it is written in one transaction and its
entries are acknowledged (and deleted from the stream) only after the commit, so a writer
killed at any moment loses nothing: its unacknowledged entries stay pending and another writer
(or itself, restarted) claims them once they have been idle long enough.
Duplicates from such a replay are dropped by the table's primary key. Entries that cannot be
parsed go to a dead-letter stream with the reason, instead of blocking the rest.
"""

import json
import logging
import os
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import redis

from django.db import (
    DataError,
    OperationalError,
    close_old_connections,
    connection,
    reset_queries,
    transaction,
)

from energy_portal import metrics
from energy_portal.redis_client import sync_client
from telemetry.services import INGEST_STREAM, readings_insert_rows

logger = logging.getLogger(__name__)

GROUP = "writers"
DEAD_LETTER_STREAM = "ep:ingest:dead"


@dataclass
class Batch:
    # One item per entry: (id, fields as read, its rows as array-literal elements, row count).
    entries: list[tuple[bytes, dict, str, int]] = field(default_factory=list)
    rows: int = 0
    started: float = 0.0

    @property
    def ids(self) -> list[bytes]:
        return [entry[0] for entry in self.entries]

    def __len__(self) -> int:
        return self.rows


def parse_rows(raw: bytes | None) -> list[list]:
    """The `rows` field of an entry: [[sensor_id, epoch_us, value], ...]; ValueError if not."""
    if raw is None:
        raise ValueError("entry has no 'rows' field")
    rows = json.loads(raw)
    if not isinstance(rows, list):
        raise ValueError("'rows' is not a list")
    for row in rows:
        if (
            not isinstance(row, list)
            or len(row) != 3
            or not isinstance(row[0], int)
            or not isinstance(row[1], int)
            or not isinstance(row[2], int | float)
        ):
            raise ValueError(f"bad row {str(row)[:80]}")
    return rows


# Compact rows: ids and times as integer text (a double would round 7.0000000000000001 to 7
# before PostgreSQL could refuse it), values as any number text PostgreSQL then parses.
_ROW = rb"\[-?\d+,-?\d+,[-+0-9.eE]+\]"
_COMPACT_ROWS = re.compile(rb"\[" + _ROW + rb"(?:," + _ROW + rb")*\]")
_BRACKETS_TO_BRACES = bytes.maketrans(b"[]", b"{}")


def entry_rows(raw: bytes | None) -> tuple[str, int]:
    """An entry's rows as elements of a PostgreSQL array literal (`{1,2,3.5},{...}`) and how
    many there are; ValueError saying why if they are not [[sensor_id, epoch_us, value], ...].

    Entries in the compact JSON the portal writes (no spaces, rows of two integers and a
    number) become the literal by swapping brackets for braces, with no Python work per row;
    PostgreSQL then parses each number and checks its range (readings_insert_rows). Anything
    else is parsed and checked as JSON here.
    """
    if raw == b"[]":
        return "", 0
    if raw is not None and _COMPACT_ROWS.fullmatch(raw):
        return raw[1:-1].translate(_BRACKETS_TO_BRACES).decode("ascii"), raw.count(b"[") - 1
    try:
        rows = parse_rows(raw)
        return ",".join(f"{{{s},{us},{float(v)!r}}}" for s, us, v in rows), len(rows)
    except (OverflowError, RecursionError) as exc:  # a 400-digit number, brackets nested deep
        raise ValueError(f"rows cannot be read: {type(exc).__name__}: {exc}") from None


def _array_literal(entries: list[tuple[bytes, dict, str, int]]) -> str:
    return "{" + ",".join(rows for _id, _fields, rows, count in entries if count) + "}"


class Writer:
    def __init__(
        self,
        *,
        name: str | None = None,
        max_rows: int = 20_000,
        max_age_s: float = 0.5,
        claim_idle_ms: int = 30_000,
        client: redis.Redis | None = None,
    ):
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.claim_idle_ms = claim_idle_ms
        self.client = client or sync_client()
        self.written = 0
        self.dead = 0
        self._stopping = False
        self._last_claim = 0.0
        self._claim_from: str | bytes | None = None  # where an unfinished claim pass goes on
        # Rows per entry, for how many entries to ask for. A start between a socket frame's few
        # rows and a file's STREAM_ENTRY_ROWS, so the first read after a restart is not hundreds
        # of big entries; what is read beyond the batch waits in `_held`, never in the batch.
        self._rows_per_entry = 1000.0
        # Entries read (pending to this writer) that did not fit the batch: the next one's.
        self._held: deque[tuple[bytes, dict, str, int]] = deque()

    def ensure_group(self) -> None:
        try:
            # From the start of the stream: entries added before any writer existed count too.
            self.client.xgroup_create(INGEST_STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stop(self) -> None:
        self._stopping = True

    def _add(self, batch: Batch, entries) -> None:
        """Parse the entries read and move them into the batch while they fit."""
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending (acked by another writer): forget it
                self.client.xack(INGEST_STREAM, GROUP, entry_id)
                continue
            try:
                rows, count = entry_rows(fields.get(b"rows"))
            except ValueError as exc:
                self._dead_letter(entry_id, fields, str(exc))
                continue
            # Up at once on a large entry, down slowly: reads stay sized for the large ones.
            size = max(1, count)
            self._rows_per_entry = max(size, 0.9 * self._rows_per_entry + 0.1 * size)
            self._held.append((entry_id, fields, rows, count))
        self._fill(batch)

    def _fill(self, batch: Batch) -> None:
        """Move held entries into the batch, in order, until the next one would take it past
        max_rows; a batch always takes its first entry, however large."""
        while self._held:
            count = self._held[0][3]
            if batch.entries and len(batch) + count > self.max_rows:
                return
            if not batch.entries:
                batch.started = time.monotonic()
            batch.entries.append(self._held.popleft())
            batch.rows += count

    def _room(self, batch: Batch, most: int) -> int:
        """How many entries to ask for: about as many as fit the batch, at least one."""
        return max(1, min(most, int((self.max_rows - len(batch)) / self._rows_per_entry)))

    def _dead_letter(self, entry_id: bytes, fields: dict, reason: str) -> None:
        logger.warning("entry %s moved to %s: %s", entry_id, DEAD_LETTER_STREAM, reason)
        record = {b"id": entry_id, b"reason": reason.encode()[:500], **fields}
        pipe = self.client.pipeline()
        pipe.xadd(DEAD_LETTER_STREAM, record)
        pipe.xack(INGEST_STREAM, GROUP, entry_id)
        pipe.xdel(INGEST_STREAM, entry_id)
        pipe.execute()
        self.dead += 1

    def _claim(self, batch: Batch) -> None:
        """Take over entries another writer read but never acknowledged (it died). A pass that
        fills the batch goes on with the next one."""
        while not self._held and len(batch) < self.max_rows:
            cursor, entries, *_ = self.client.xautoclaim(
                INGEST_STREAM,
                GROUP,
                self.name,
                self.claim_idle_ms,
                self._claim_from,
                count=self._room(batch, 1000),
            )
            if entries:
                logger.info("claimed %d pending entries of a stopped writer", len(entries))
                self._add(batch, entries)
            if cursor in (b"0-0", "0-0"):
                self._claim_from = None
                return
            self._claim_from = cursor

    def _flush(self, batch: Batch) -> None:
        """Write the batch; retry on database trouble until it is in, then acknowledge it."""
        started = time.perf_counter()
        delay = 0.5
        while True:
            try:
                inserted = self._write(batch)
                break
            except OperationalError as exc:
                logger.warning("database unavailable (%s); retrying in %.1fs", exc, delay)
                connection.close()
                time.sleep(delay)
                delay = min(delay * 2, 10)
                if self._stopping:
                    return  # the entries stay pending; a writer will claim them
        pipe = self.client.pipeline()
        pipe.xack(INGEST_STREAM, GROUP, *batch.ids)
        pipe.xdel(INGEST_STREAM, *batch.ids)
        pipe.execute()
        metrics.WRITER_BATCH_ROWS.observe(len(batch))
        metrics.WRITER_BATCH_SECONDS.observe(time.perf_counter() - started)
        self.written += inserted
        logger.debug("wrote %d new of %d readings", inserted, len(batch))

    def _write(self, batch: Batch) -> int:
        """The batch in one transaction; if PostgreSQL refuses a row, each entry in its own,
        the refused ones moved to the dead-letter stream (and out of the batch)."""
        try:
            with transaction.atomic():
                return readings_insert_rows(rows=_array_literal(batch.entries))
        except DataError:
            logger.warning("a batch holds a row the database refuses; writing entry by entry")
        inserted = 0
        for entry in list(batch.entries):
            entry_id, fields, _rows, _count = entry
            try:
                with transaction.atomic():
                    inserted += readings_insert_rows(rows=_array_literal([entry]))
            except DataError as exc:
                # PostgreSQL's message can quote the whole literal: its start says enough
                self._dead_letter(entry_id, fields, f"refused by the database: {str(exc)[:300]}")
                batch.entries.remove(entry)
                batch.rows -= entry[3]
        return inserted

    def run_once(self, batch: Batch, block_ms: int) -> Batch:
        """Read what is there (waiting up to block_ms), and write the batch when it is due."""
        now = time.monotonic()
        if self._claim_from is None and now - self._last_claim > self.claim_idle_ms / 1000:
            self._last_claim = now
            self._claim_from = "0-0"
        self._fill(batch)
        if self._claim_from is not None:
            self._claim(batch)
        if not self._held and len(batch) < self.max_rows:
            # Entries carry from one to STREAM_ENTRY_ROWS rows: read about as many as fit.
            response = self.client.xreadgroup(
                GROUP, self.name, {INGEST_STREAM: ">"}, count=self._room(batch, 500), block=block_ms
            )
            for _stream, entries in response or []:
                self._add(batch, entries)
        due = (
            self._held
            or len(batch) >= self.max_rows
            or (batch.ids and time.monotonic() - batch.started >= self.max_age_s)
        )
        if due:
            self._flush(batch)
            return Batch()
        return batch

    def run(self) -> None:
        self.ensure_group()
        logger.info("ingest writer %s started", self.name)
        batch = Batch()
        while not self._stopping:
            try:
                # Drops a connection the server closed (e.g. PostgreSQL restarted) before use.
                close_old_connections()
                reset_queries()  # with DEBUG on, Django logs every batch's SQL, literal included
                batch = self.run_once(batch, block_ms=int(self.max_age_s * 1000) or 1)
            except redis.ConnectionError as exc:
                logger.warning("Redis unavailable (%s); retrying", exc)
                time.sleep(1)
            except redis.ResponseError as exc:
                # The stream or its group vanished (deleted by hand, or a Redis restart without
                # persistence): make them again and go on; anything else is a real error.
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                logger.warning("ingest stream or group missing (%s); recreating", exc)
                self.ensure_group()
        self._fill(batch)  # entries read but held back for the next batch are written too
        while batch.ids:  # what was read is written before leaving, in batches as always
            self._flush(batch)
            batch = Batch()
            self._fill(batch)
        logger.info("ingest writer %s stopped; %d readings written", self.name, self.written)
