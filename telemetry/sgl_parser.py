"""The one parser of SA4CPS `.sgl_v2` load-profile files.

Bytes in, records and errors out. It knows nothing of FTP, the database or the ingest pipeline;
whoever fetched the file decides what to do with a file that is not `valid`.

The format is fixed-width ISO-8859-1 text, one record per line (LF or CRLF), right-padded with
spaces. Columns below are 1-based, as the format's description counts them:

    header  00: 1-2 "00", 3-12 entity code, 13-20 file date YYYYMMDD, 21-24 sequence number
    reading 20: 1-2 "20", 3-22 CPE, 23-30 date YYYYMMDD, 31-34 time HHMM (start of a 15-minute
                interval, local time), 35-44 energy in hundredths of kWh (10 digits), 45 R|E
    trailer 99: 1-2 "99", 3-12 "TOTAL", 13-20 number of reading records

Local times become aware UTC datetimes. On the autumn clock change the repeated local hour
appears twice in order; a CPE's local times going backwards on a day marks the second pass
(fold=1). On the spring change the skipped local hour does not exist and is an error.

The parser collects every problem it finds (up to `MAX_ERRORS`) rather than stopping at the
first, so a quarantined file can be fixed in one round.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from itertools import islice
from zoneinfo import ZoneInfo

MAX_ERRORS = 1000

# Shortest line that holds every field of each record type.
_HEADER_LENGTH = 24
_READING_LENGTH = 45
_TRAILER_LENGTH = 20

# A reading as `parse_sgl_rows` gives it: (cpe, start in UTC, kwh, estimated, line number).
SglRow = tuple[str, datetime, float, bool, int]


@dataclass(frozen=True, slots=True)
class SglRecord:
    """Energy used by meter `cpe` in the 15 minutes starting at `start` (aware, UTC)."""

    cpe: str
    start: datetime
    kwh: float
    estimated: bool
    line: int


@dataclass(frozen=True, slots=True)
class SglError:
    """What is wrong and where; `message` starts with "line N:" so it reads on its own."""

    line: int
    message: str


@dataclass
class SglFile:
    """A parsed file. `file_date` and `sequence` are None when the header is missing or bad.

    Records with a problem are left out of `records` and named in `errors`; the file should be
    ingested only when it is `valid`.
    """

    entity: str
    file_date: date | None
    sequence: int | None
    records: list[SglRecord] = field(default_factory=list)
    errors: list[SglError] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors


def parse_sgl(data: bytes, *, tz: str = "Europe/Lisbon") -> SglFile:
    """Parse a `.sgl_v2` file whose local times are in the zone `tz` (an IANA name).

    Never raises for bad content: every problem becomes an `SglError`. An unknown `tz` raises
    `zoneinfo.ZoneInfoNotFoundError`, as that is a configuration mistake, not a bad file.
    """
    sgl_file, rows = parse_sgl_rows(data, tz=tz)
    sgl_file.records = [SglRecord(*row) for row in rows]
    return sgl_file


def parse_sgl_rows(data: bytes, *, tz: str = "Europe/Lisbon") -> tuple[SglFile, list[SglRow]]:
    """`parse_sgl` for the hot path: the readings as plain `SglRow` tuples.

    The returned `SglFile` has its header fields and errors filled and `records` empty, which
    spares a million-record file a million objects when the caller only forwards values.
    """
    return _Scanner(ZoneInfo(tz), tz).scan(data)


class _Errors:
    """Errors in file order, capped at MAX_ERRORS with a last line saying how many were left out."""

    def __init__(self) -> None:
        self.items: list[SglError] = []
        self.left_out = 0
        self.first_left_out = 0

    def add(self, line: int, message: str) -> None:
        if len(self.items) < MAX_ERRORS:
            self.items.append(SglError(line, f"line {line}: {message}"))
            return
        if not self.left_out:
            self.first_left_out = line
        self.left_out += 1

    def final(self) -> list[SglError]:
        if not self.left_out:
            return self.items
        summary = SglError(
            self.first_left_out,
            f"… and {self.left_out} more errors from line {self.first_left_out} on (not listed)",
        )
        return [*self.items, summary]


def _calendar_date(text: str) -> date | None:
    if len(text) != 8 or not text.isdecimal():  # isdecimal is ASCII 0-9 only in Latin-1
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _tail_problem(line: str, after_column: int) -> str | None:
    """Fields end at `after_column`; anything but padding after it means the columns slipped."""
    tail = line[after_column:]
    if not tail or tail.isspace():
        return None
    return (
        f"unexpected text {tail.strip()[:20]!r} after column {after_column}; "
        "the rest of the line must be spaces"
    )


class _Scanner:
    """One pass over the lines of one file. Caches per file, so nothing leaks between files."""

    def __init__(self, zone: ZoneInfo, tz_name: str) -> None:
        self.zone = zone
        self.tz_name = tz_name
        self.errors = _Errors()
        # date+time text (columns 23-34) -> (UTC start, UTC start on the second pass or None)
        self.utc_of: dict[str, tuple[datetime, datetime | None]] = {}
        self.bad_stamps: dict[str, list[str]] = {}

    def scan(self, data: bytes) -> tuple[SglFile, list[SglRow]]:
        text = data.decode("latin-1")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        if "\x00" in text:
            lines = self.without_nul(lines)

        sgl_file = SglFile(entity="", file_date=None, sequence=None)
        if not lines:
            self.errors.add(
                1, "the file is empty; expected a header (00), readings (20) and a trailer (99)"
            )
            sgl_file.errors = self.errors.final()
            return sgl_file, []

        first = 0
        if lines[0][:2] == "00":
            self.header(lines[0], sgl_file)
            first = 1
        else:
            self.errors.add(
                1, f"the file must start with a header record (00), not {lines[0][:2]!r}"
            )
        rows = self.body(islice(lines, first, None), first + 1, len(lines))
        sgl_file.errors = self.errors.final()
        return sgl_file, rows

    def without_nul(self, lines: list[str]) -> list[str]:
        """Lines holding a NUL byte are named, their NULs shown as U+FFFD: a NUL is no part of
        this text format, and no column holding one could be stored (PostgreSQL text refuses
        it). Lines and columns keep their numbers, so the other checks still point right."""
        kept = []
        for number, line in enumerate(lines, start=1):
            if "\x00" in line:
                column = line.index("\x00") + 1
                self.errors.add(
                    number, f"holds a NUL byte (column {column}); the file must be text"
                )
                line = line.replace("\x00", "\ufffd")
            kept.append(line)
        return kept

    def header(self, line: str, sgl_file: SglFile) -> None:
        add = self.errors.add
        if len(line) < _HEADER_LENGTH:
            add(1, f"header record is {len(line)} characters long; it needs {_HEADER_LENGTH}")
            return
        sgl_file.entity = line[2:12].strip()
        if not sgl_file.entity:
            add(1, "entity code is blank (columns 3-12)")
        sgl_file.file_date = _calendar_date(line[12:20])
        if sgl_file.file_date is None:
            add(1, f"file date {line[12:20]!r} is not a date YYYYMMDD (columns 13-20)")
        if line[20:24].isdecimal():
            sgl_file.sequence = int(line[20:24])
        else:
            add(1, f"sequence number {line[20:24]!r} is not a number (columns 21-24)")
        if problem := _tail_problem(line, _HEADER_LENGTH):
            add(1, problem)

    def body(self, lines: Iterable[str], first_number: int, last_number: int) -> list[SglRow]:
        """The readings after the header; the hot loop is inlined because it runs per record.

        Files list each meter's day in order, so the loop keeps the current CPE+date (columns
        3-30) in locals and touches its per-day and per-meter tables only when that changes.
        """
        add = self.errors.add
        utc_of = self.utc_of
        bad_stamps = self.bad_stamps
        kwh_of: dict[str, float] = {}  # energy text -> kWh: meters repeat their values
        last_stamp: dict[str, str] = {}  # CPE+date -> its last date+time seen (when not current)
        went_back: set[str] = set()  # CPE+date whose local times went backwards: second pass
        latest_of: dict[str, datetime] = {}  # CPE -> its latest start (when not current)
        # CPE+date of the reading before, its date+time, its CPE and that CPE's latest start.
        # "\n" matches no line (lines are split on it), so the first reading starts a new day.
        day, stamp_before, day_cpe, latest = "\n", "", "", None
        # (CPE, start) -> line: made only once a meter's starts stop increasing (a duplicate or an
        # unsorted file); until then a start later than its meter's latest cannot be a repeat.
        first_line_of: dict[tuple[str, datetime], int] | None = None
        rows: list[SglRow] = []
        keep = rows.append
        readings = 0
        trailer_at = 0

        for number, line in enumerate(lines, first_number):
            if line[:2] == "20" and len(line) >= _READING_LENGTH and not trailer_at:
                readings += 1
                stamp = line[22:34]
                utc = utc_of.get(stamp)
                if utc is None and stamp not in bad_stamps:
                    utc = self.convert(stamp)
                cpe = line[2:22].strip()
                energy = line[34:44]
                kwh = kwh_of.get(energy)
                if kwh is None and energy.isdecimal():
                    kwh = kwh_of[energy] = int(energy) / 100
                flag = line[44]
                tail = line[45:]
                if (
                    utc is not None
                    and cpe
                    and kwh is not None
                    and (flag == "R" or flag == "E")
                    and (not tail or tail.isspace())
                ):
                    if line.startswith(day, 2):
                        previous = stamp_before
                    else:
                        if day_cpe:
                            last_stamp[day] = stamp_before
                            latest_of[day_cpe] = latest
                        day, day_cpe = line[2:30], cpe
                        previous = last_stamp.get(day)
                        latest = latest_of.get(cpe)
                    stamp_before = stamp
                    # Same CPE and date, so comparing date+time compares the times of day.
                    if previous is not None and stamp < previous:
                        went_back.add(day)
                    start, second_pass = utc
                    if second_pass is not None and day in went_back:
                        start = second_pass
                    if first_line_of is None:
                        if latest is None or start > latest:
                            latest = start
                            keep((cpe, start, kwh, flag == "E", number))
                            continue
                        first_line_of = {(row[0], row[1]): row[4] for row in rows}
                    first_line = first_line_of.setdefault((cpe, start), number)
                    if first_line == number:
                        keep((cpe, start, kwh, flag == "E", number))
                    else:
                        add(number, self.duplicate(cpe, stamp, start, first_line))
                else:
                    for problem in self.reading_problems(line, stamp):
                        add(number, problem)
                continue

            kind = line[:2]
            if trailer_at:
                add(number, f"record after the trailer (99) on line {trailer_at}; remove it")
            elif kind == "20":
                readings += 1
                add(
                    number,
                    f"reading record is {len(line)} characters long; it needs {_READING_LENGTH} "
                    "(type, CPE, date, time, energy, flag)",
                )
            elif kind == "99":
                trailer_at = number
                self.trailer(number, line, readings)
            elif kind == "00":
                add(number, "a second header record (00); only line 1 may be a header")
            elif not line.strip():
                add(number, "blank line inside the file; remove it")
            else:
                add(number, f"unknown record type {kind!r} (columns 1-2); expected 00, 20 or 99")

        if not trailer_at:
            add(
                last_number,
                f"the file ends without a trailer record (99 TOTAL) after line {last_number}; "
                "it is probably truncated",
            )
        return rows

    def convert(self, stamp: str) -> tuple[datetime, datetime | None] | None:
        """Local date+time text to UTC, cached; None (and the problems noted) if it is bad."""
        day = _calendar_date(stamp[:8])
        clock = stamp[8:]
        problems = []
        if day is None:
            problems.append(f"date {stamp[:8]!r} is not a date YYYYMMDD (columns 23-30)")
        if not clock.isdecimal() or int(clock[:2]) > 23 or int(clock[2:]) > 59:
            problems.append(f"time {clock!r} is not a time of day HHMM (columns 31-34)")
        elif int(clock[2:]) % 15:
            problems.append(
                f"time {clock!r} is not the start of a 15-minute interval (columns 31-34); "
                "minutes must be 00, 15, 30 or 45"
            )
        if not problems:
            local = datetime(day.year, day.month, day.day, int(clock[:2]), int(clock[2:]))
            try:
                start = local.replace(tzinfo=self.zone).astimezone(UTC)
                second_pass = local.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
            except OverflowError:  # e.g. 00010101 east of Greenwich falls before year 1 in UTC
                problems.append(f"date {stamp[:8]!r} is out of range (columns 23-30)")
            else:
                if start.astimezone(self.zone).replace(tzinfo=None) != local:
                    problems.append(
                        f"local time {day.isoformat()} {clock[:2]}:{clock[2:]} does not exist in "
                        f"{self.tz_name}: clocks go forward then (columns 23-34)"
                    )
        if problems:
            self.bad_stamps[stamp] = problems
            return None
        utc = (start, second_pass if second_pass != start else None)
        self.utc_of[stamp] = utc
        return utc

    def reading_problems(self, line: str, stamp: str) -> list[str]:
        problems = []
        if not line[2:22].strip():
            problems.append("CPE is blank (columns 3-22)")
        problems.extend(self.bad_stamps.get(stamp, ()))
        if not line[34:44].isdecimal():
            problems.append(
                f"energy {line[34:44]!r} is not a number (columns 35-44); "
                "it must be 10 digits in hundredths of kWh"
            )
        if line[44] not in ("R", "E"):
            problems.append(f"flag {line[44]!r} must be R (read) or E (estimated) (column 45)")
        if problem := _tail_problem(line, _READING_LENGTH):
            problems.append(problem)
        return problems

    def duplicate(self, cpe: str, stamp: str, start: datetime, first_line: int) -> str:
        return (
            f"duplicate reading for CPE {cpe} at local {stamp[:8]} {stamp[8:]} "
            f"({start:%Y-%m-%dT%H:%MZ}); line {first_line} already has it"
        )

    def trailer(self, number: int, line: str, readings: int) -> None:
        add = self.errors.add
        if len(line) < _TRAILER_LENGTH:
            add(
                number, f"trailer record is {len(line)} characters long; it needs {_TRAILER_LENGTH}"
            )
            return
        if line[2:12].strip() != "TOTAL":
            add(number, f"trailer label {line[2:12].strip()!r} must be TOTAL (columns 3-12)")
        count = line[12:20]
        if not count.isdecimal():
            add(number, f"record count {count!r} is not a number (columns 13-20)")
        elif int(count) != readings:
            add(
                number,
                f"trailer counts {int(count)} reading records (columns 13-20) "
                f"but the file has {readings}",
            )
        if problem := _tail_problem(line, _TRAILER_LENGTH):
            add(number, problem)
