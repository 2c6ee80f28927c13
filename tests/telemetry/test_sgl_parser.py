"""The `.sgl_v2` parser: the sample files with their expected figures, then each rule."""

import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import pytest

from telemetry.sgl_parser import MAX_ERRORS, SglRecord, parse_sgl, parse_sgl_rows
from tests.fixtures.sample_files import AUTUMN, DAY, ENTITY, MALFORMED, RESEND, SAMPLES

SGL_SAMPLES = sorted(SAMPLES.glob("*.sgl_v2"))
EXPECTED = sorted(SAMPLES.glob("*.expected.json"))

CPE = "PT0002000068856781NV"
OTHER_CPE = "PT0002000099887766XT"
HEADER = "00GECAD01   202611210001"


def reading(
    time: str, *, day: str = "20261121", energy: str = "0000000011", flag: str = "R", cpe: str = CPE
) -> str:
    """A reading line padded to 100 columns, as the samples are."""
    return f"20{cpe:<20}{day}{time}{energy}{flag}".ljust(100)


def sgl(*lines: str, header: str = HEADER, count: int | None = None, newline: str = "\n") -> bytes:
    """A file with a header, the given lines and a trailer counting its readings (or `count`)."""
    if count is None:
        count = sum(line.startswith("20") for line in lines)
    trailer = f"99TOTAL     {count:08d}".ljust(100)
    return newline.join([header.ljust(100), *lines, trailer, ""]).encode("latin-1")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def error_lines(sgl_file) -> list[int]:
    return [error.line for error in sgl_file.errors]


# --- the sample files --------------------------------------------------------------------------


def test_samples_folder_is_found_and_holds_sgl_files_with_expected_figures():
    assert SAMPLES.is_dir()
    assert len(SGL_SAMPLES) >= 4
    assert len(EXPECTED) >= 2


@pytest.mark.parametrize("path", SGL_SAMPLES, ids=lambda p: p.name)
def test_every_sample_is_valid_unless_named_malformed(path):
    sgl_file = parse_sgl(path.read_bytes())

    assert sgl_file.valid is ("malformed" not in path.name), sgl_file.errors
    assert sgl_file.entity == ENTITY


@pytest.mark.parametrize("expected_path", EXPECTED, ids=lambda p: p.name)
def test_sample_gives_the_figures_in_its_expected_json(expected_path):
    # given
    expected = json.loads(expected_path.read_text())
    data = expected_path.with_name(expected_path.name.replace(".expected.json", ".sgl_v2"))

    # when
    sgl_file = parse_sgl(data.read_bytes())

    # then: every figure the sample promises, and no figure this test does not know how to check
    assert set(expected) <= {
        "records",
        "distinct_utc_instants",
        "first_utc",
        "last_utc",
        "total_kwh_by_cpe",
        "first",
        "last",
    }
    records = sgl_file.records
    assert sgl_file.valid
    assert len(records) == expected["records"]
    if "distinct_utc_instants" in expected:
        assert len({r.start for r in records}) == expected["distinct_utc_instants"]
    if "first_utc" in expected:
        assert records[0].start == datetime.fromisoformat(expected["first_utc"])
    if "last_utc" in expected:
        assert records[-1].start == datetime.fromisoformat(expected["last_utc"])
    if "total_kwh_by_cpe" in expected:
        totals: dict[str, int] = defaultdict(int)
        for record in records:
            totals[record.cpe] += round(record.kwh * 100)
        assert {cpe: hundredths / 100 for cpe, hundredths in totals.items()} == expected[
            "total_kwh_by_cpe"
        ]
    for key, record in (("first", records[0]), ("last", records[-1])):
        if key in expected:
            cpe, start, kwh = expected[key]
            assert (record.cpe, record.start, record.kwh) == (
                cpe,
                datetime.fromisoformat(start),
                kwh,
            )


def test_autumn_sample_maps_its_25_hour_day_to_distinct_consecutive_utc_instants():
    sgl_file = parse_sgl((SAMPLES / f"{AUTUMN}.sgl_v2").read_bytes())
    starts = [record.start for record in sgl_file.records]

    assert len(starts) == 100  # 25 hours of quarter hours
    assert all(later - earlier == timedelta(minutes=15) for earlier, later in pairwise(starts))
    # lines 6-9 and 10-13 both say 01:00-01:45 local: first summer time, then winter time
    assert [r.start for r in sgl_file.records if 6 <= r.line <= 13] == [
        utc(2026, 10, 25, 0, 0),
        utc(2026, 10, 25, 0, 15),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 0, 45),
        utc(2026, 10, 25, 1, 0),
        utc(2026, 10, 25, 1, 15),
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 25, 1, 45),
    ]


def test_resend_sample_is_the_same_content_under_another_name_and_parses_the_same():
    original = SAMPLES / f"{DAY}.sgl_v2"
    resend = SAMPLES / f"{RESEND}.sgl_v2"

    assert resend.name != original.name
    assert resend.read_bytes() == original.read_bytes()
    assert parse_sgl(resend.read_bytes()) == parse_sgl(original.read_bytes())


def test_malformed_sample_names_each_bad_line_and_keeps_the_good_ones():
    sgl_file = parse_sgl((SAMPLES / f"{MALFORMED}.sgl_v2").read_bytes())

    assert not sgl_file.valid
    messages = [error.message for error in sgl_file.errors]
    assert messages == [
        "line 4: energy '00000O0012' is not a number (columns 35-44); "
        "it must be 10 digits in hundredths of kWh",
        "line 6: date '20261131' is not a date YYYYMMDD (columns 23-30)",
        "line 8: reading record is 31 characters long; it needs 45 "
        "(type, CPE, date, time, energy, flag)",
        "line 10: trailer counts 97 reading records (columns 13-20) but the file has 8",
    ]
    assert error_lines(sgl_file) == [4, 6, 8, 10]
    assert [record.line for record in sgl_file.records] == [2, 3, 5, 7, 9]


# --- header, readings, trailer -----------------------------------------------------------------


def test_a_good_file_gives_its_header_and_readings_in_utc():
    sgl_file = parse_sgl(
        sgl(
            reading("0000", energy="0000012345", flag="E"),
            reading("2345", cpe="SHORT"),
        )
    )

    assert sgl_file.valid
    assert (sgl_file.entity, sgl_file.file_date, sgl_file.sequence) == (
        "GECAD01",
        date(2026, 11, 21),
        1,
    )
    assert sgl_file.records == [
        SglRecord(cpe=CPE, start=utc(2026, 11, 21, 0, 0), kwh=123.45, estimated=True, line=2),
        SglRecord(cpe="SHORT", start=utc(2026, 11, 21, 23, 45), kwh=0.11, estimated=False, line=3),
    ]


def test_summer_local_times_are_an_hour_ahead_of_utc():
    sgl_file = parse_sgl(sgl(reading("0000", day="20260701")))

    assert sgl_file.records[0].start == utc(2026, 6, 30, 23, 0)


def test_times_are_read_in_the_given_zone():
    sgl_file = parse_sgl(sgl(reading("0000")), tz="Europe/Berlin")

    assert sgl_file.records[0].start == utc(2026, 11, 20, 23, 0)


def test_rows_are_the_records_as_plain_tuples():
    data = sgl(reading("0000"), reading("0015", flag="E"), reading("0030"), reading("0030"))

    sgl_file, rows = parse_sgl_rows(data)

    assert sgl_file.records == []
    assert sgl_file.errors == parse_sgl(data).errors
    assert [SglRecord(*row) for row in rows] == parse_sgl(data).records


def test_crlf_lines_parse_like_lf_lines():
    lines = (reading("0000"), reading("0015"))

    crlf = parse_sgl(sgl(*lines, newline="\r\n"))

    assert crlf.valid, crlf.errors
    assert crlf == parse_sgl(sgl(*lines))


def test_latin1_entity_code_is_decoded():
    sgl_file = parse_sgl(sgl(reading("0000"), header="00ÉDP SÃO   202611210007"))

    assert sgl_file.valid
    assert (sgl_file.entity, sgl_file.sequence) == ("ÉDP SÃO", 7)


def test_trailing_blank_lines_are_ignored():
    sgl_file = parse_sgl(sgl(reading("0000")) + b"\n   \r\n\n")

    assert sgl_file.valid, sgl_file.errors


def test_lines_trimmed_of_their_padding_are_accepted():
    data = (
        b"00GECAD01   202611210001\n"
        + reading("0000").rstrip().encode()
        + b"\n99TOTAL     00000001"
    )

    sgl_file = parse_sgl(data)

    assert sgl_file.valid, sgl_file.errors
    assert len(sgl_file.records) == 1


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n  \n"], ids=["empty", "newline", "blank"])
def test_empty_file_is_one_error_on_line_1(data):
    sgl_file = parse_sgl(data)

    assert [error.message for error in sgl_file.errors] == [
        "line 1: the file is empty; expected a header (00), readings (20) and a trailer (99)"
    ]
    assert (sgl_file.entity, sgl_file.file_date, sgl_file.sequence) == ("", None, None)


def test_truncated_file_without_trailer_is_an_error_at_its_last_line():
    data = sgl(reading("0000"), reading("0015")).rsplit(b"99TOTAL", 1)[0]

    sgl_file = parse_sgl(data)

    assert error_lines(sgl_file) == [3]
    assert "without a trailer" in sgl_file.errors[0].message
    assert "truncated" in sgl_file.errors[0].message
    assert not sgl_file.valid


def test_wrong_trailer_count_is_an_error_on_the_trailer_line():
    sgl_file = parse_sgl(sgl(reading("0000"), reading("0015"), count=3))

    assert [error.message for error in sgl_file.errors] == [
        "line 4: trailer counts 3 reading records (columns 13-20) but the file has 2"
    ]


def test_trailer_count_includes_bad_readings():
    sgl_file = parse_sgl(sgl(reading("0000"), reading("0015", flag="X")))

    assert error_lines(sgl_file) == [3]  # only the bad flag, not the count


@pytest.mark.parametrize(
    ("trailer", "message"),
    [
        ("99TOTL      00000001", "line 3: trailer label 'TOTL' must be TOTAL (columns 3-12)"),
        ("99TOTAL     0000000x", "line 3: record count '0000000x' is not a number (columns 13-20)"),
        ("99TOTAL", "line 3: trailer record is 7 characters long; it needs 20"),
    ],
    ids=["label", "count", "short"],
)
def test_bad_trailer_is_reported(trailer, message):
    data = f"{HEADER}\n{reading('0000')}\n{trailer}\n".encode()

    assert [error.message for error in parse_sgl(data).errors] == [message]


def test_missing_header_is_an_error_and_the_readings_are_still_checked():
    data = f"{reading('0000')}\n{reading('0015', flag='?')}\n99TOTAL     00000002\n".encode()

    sgl_file = parse_sgl(data)

    assert error_lines(sgl_file) == [1, 2]
    assert sgl_file.errors[0].message == (
        "line 1: the file must start with a header record (00), not '20'"
    )
    assert sgl_file.file_date is None
    assert [record.line for record in sgl_file.records] == [1]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("00GECAD01   202613210001", "file date '20261321' is not a date YYYYMMDD (columns 13-20)"),
        ("00GECAD01   2026112100x1", "sequence number '00x1' is not a number (columns 21-24)"),
        ("00          202611210001", "entity code is blank (columns 3-12)"),
        ("00GECAD01   20261121", "header record is 20 characters long; it needs 24"),
        ("00GECAD01   202611210001 X", "unexpected text 'X' after column 24"),
    ],
    ids=["date", "sequence", "entity", "short", "tail"],
)
def test_bad_header_is_reported_on_line_1(header, message):
    sgl_file = parse_sgl(f"{header}\n{reading('0000')}\n99TOTAL     00000001\n".encode())

    assert error_lines(sgl_file) == [1]
    assert sgl_file.errors[0].message.startswith(f"line 1: {message}")


@pytest.mark.parametrize(
    ("day", "time", "message"),
    [
        ("20261341", "0000", "date '20261341' is not a date YYYYMMDD (columns 23-30)"),
        ("20260229", "0000", "date '20260229' is not a date YYYYMMDD (columns 23-30)"),
        ("2026112 ", "0000", "date '2026112 ' is not a date YYYYMMDD (columns 23-30)"),
        ("20261121", "0010", "time '0010' is not the start of a 15-minute interval"),
        ("20261121", "2460", "time '2460' is not a time of day HHMM (columns 31-34)"),
        ("20261121", "2400", "time '2400' is not a time of day HHMM (columns 31-34)"),
        ("20261121", "1a00", "time '1a00' is not a time of day HHMM (columns 31-34)"),
    ],
    ids=["month-13", "not-leap", "blank-digit", "not-15-min", "2460", "2400", "letter"],
)
def test_bad_date_or_time_is_an_error_naming_line_and_columns(day, time, message):
    sgl_file = parse_sgl(sgl(reading("0000"), reading(time, day=day), reading("0030")))

    assert error_lines(sgl_file) == [3]
    assert sgl_file.errors[0].message.startswith(f"line 3: {message}")
    assert [record.line for record in sgl_file.records] == [2, 4]


@pytest.mark.parametrize("energy", ["00000A0012", " 000000012", "-000000012", "0000000¹12"])
def test_non_numeric_energy_is_an_error(energy):
    sgl_file = parse_sgl(sgl(reading("0000", energy=energy)))

    assert [error.message for error in sgl_file.errors] == [
        f"line 2: energy {energy!r} is not a number (columns 35-44); "
        "it must be 10 digits in hundredths of kWh"
    ]
    assert sgl_file.records == []


@pytest.mark.parametrize("flag", ["X", "r", " "])
def test_flag_other_than_r_or_e_is_an_error(flag):
    sgl_file = parse_sgl(sgl(reading("0000", flag=flag)))

    assert [error.message for error in sgl_file.errors] == [
        f"line 2: flag {flag!r} must be R (read) or E (estimated) (column 45)"
    ]


def test_blank_cpe_is_an_error():
    sgl_file = parse_sgl(sgl(reading("0000", cpe="")))

    assert [error.message for error in sgl_file.errors] == ["line 2: CPE is blank (columns 3-22)"]


def test_text_after_the_flag_is_an_error():
    sgl_file = parse_sgl(sgl(reading("0000")[:45] + "R0000000012E"))

    assert [error.message for error in sgl_file.errors] == [
        "line 2: unexpected text 'R0000000012E' after column 45; "
        "the rest of the line must be spaces"
    ]


def test_every_problem_of_one_line_is_reported():
    sgl_file = parse_sgl(sgl(reading("0007", day="20261341", energy="x" * 10, flag="Q")))

    assert error_lines(sgl_file) == [2, 2, 2, 2]
    assert [error.message.split(" ", 3)[2] for error in sgl_file.errors] == [
        "date",
        "time",
        "energy",
        "flag",
    ]


def test_unknown_record_type_is_an_error():
    sgl_file = parse_sgl(sgl(reading("0000"), "30SOMETHING ELSE"))

    assert [error.message for error in sgl_file.errors] == [
        "line 3: unknown record type '30' (columns 1-2); expected 00, 20 or 99"
    ]


def test_short_reading_line_is_an_error_and_still_counted_by_the_trailer():
    sgl_file = parse_sgl(sgl(reading("0000"), f"20{CPE}2026112100", reading("0030")))

    assert [error.message for error in sgl_file.errors] == [
        "line 3: reading record is 32 characters long; it needs 45 "
        "(type, CPE, date, time, energy, flag)"
    ]


def test_blank_line_inside_the_file_is_an_error():
    sgl_file = parse_sgl(sgl(reading("0000"), "", reading("0015")))

    assert [error.message for error in sgl_file.errors] == [
        "line 3: blank line inside the file; remove it"
    ]


def test_records_after_the_trailer_and_a_second_header_are_errors():
    data = sgl(reading("0000"), HEADER) + reading("0015").encode() + b"\n"

    sgl_file = parse_sgl(data)

    assert [error.message for error in sgl_file.errors] == [
        "line 3: a second header record (00); only line 1 may be a header",
        "line 5: record after the trailer (99) on line 4; remove it",
    ]
    assert [record.line for record in sgl_file.records] == [2]


def test_errors_are_capped_with_a_last_line_saying_how_many_more():
    bad = [reading("0000", energy="x" * 10)] * (MAX_ERRORS + 500)

    sgl_file = parse_sgl(sgl(*bad))

    assert len(sgl_file.errors) == MAX_ERRORS + 1
    assert sgl_file.errors[-1].line == MAX_ERRORS + 2
    assert sgl_file.errors[-1].message == (
        f"… and 500 more errors from line {MAX_ERRORS + 2} on (not listed)"
    )


def test_duplicate_reading_is_an_error_naming_the_first_line():
    sgl_file = parse_sgl(
        sgl(reading("0000"), reading("0015"), reading("0000", energy="0000000099"))
    )

    assert [error.message for error in sgl_file.errors] == [
        f"line 4: duplicate reading for CPE {CPE} at local 20261121 0000 (2026-11-21T00:00Z); "
        "line 2 already has it"
    ]
    assert [record.kwh for record in sgl_file.records] == [0.11, 0.11]


def test_same_time_for_two_cpes_is_not_a_duplicate():
    sgl_file = parse_sgl(sgl(reading("0000"), reading("0000", cpe=OTHER_CPE)))

    assert sgl_file.valid


def test_duplicate_after_other_meters_and_days_names_the_first_line():
    # given each meter's days in order, then a line of the first meter again
    days = ["20261120", "20261121"]
    lines = [
        reading(t, day=d, cpe=c) for c in (CPE, OTHER_CPE) for d in days for t in ("0000", "0015")
    ]
    lines.append(reading("0015", day="20261120", energy="0000000099"))

    sgl_file = parse_sgl(sgl(*lines))

    assert [error.message for error in sgl_file.errors] == [
        f"line 10: duplicate reading for CPE {CPE} at local 20261120 0015 (2026-11-20T00:15Z); "
        "line 3 already has it"
    ]
    assert len(sgl_file.records) == 8


def test_unsorted_readings_are_all_kept_and_a_repeat_among_them_is_a_duplicate():
    times = ["0100", "0030", "0045", "0000", "0115", "0030", "0015"]

    sgl_file = parse_sgl(sgl(*(reading(t) for t in times)))

    assert error_lines(sgl_file) == [7]
    assert "line 3 already has it" in sgl_file.errors[0].message
    assert sorted(record.start for record in sgl_file.records) == [
        utc(2026, 11, 21, 0, 15 * i) if i < 4 else utc(2026, 11, 21, 1, 15 * (i - 4))
        for i in range(6)
    ]


def test_cpe_padded_differently_is_the_same_meter():
    # columns 3-22 are trimmed: " PT1" and "PT1 " name one meter, so the same time is a repeat
    sgl_file = parse_sgl(sgl(reading("0000", cpe="PT1"), reading("0000", cpe=" PT1")))

    assert error_lines(sgl_file) == [3]
    assert "duplicate reading for CPE PT1 " in sgl_file.errors[0].message


# --- clock changes (Europe/Lisbon: 2026-03-29 01:00 -> 02:00, 2026-10-25 02:00 -> 01:00) --------

AUTUMN_TIMES = ["0045", "0100", "0115", "0130", "0145", "0100", "0115", "0130", "0145", "0200"]
AUTUMN_UTC = [utc(2026, 10, 24, 23, 45) + timedelta(minutes=15 * i) for i in range(10)]


def test_spring_skipped_hour_is_an_error_and_the_hours_around_it_are_kept():
    times = ["0045", "0100", "0115", "0130", "0145", "0200"]

    sgl_file = parse_sgl(sgl(*(reading(t, day="20260329") for t in times)))

    assert error_lines(sgl_file) == [3, 4, 5, 6]
    assert sgl_file.errors[0].message == (
        "line 3: local time 2026-03-29 01:00 does not exist in Europe/Lisbon: "
        "clocks go forward then (columns 23-34)"
    )
    assert [record.start for record in sgl_file.records] == [
        utc(2026, 3, 29, 0, 45),
        utc(2026, 3, 29, 1, 0),
    ]


def test_autumn_repeated_hour_maps_to_summer_time_then_winter_time():
    sgl_file = parse_sgl(sgl(*(reading(t, day="20261025") for t in AUTUMN_TIMES)))

    assert sgl_file.valid, sgl_file.errors
    assert [record.start for record in sgl_file.records] == AUTUMN_UTC


def test_autumn_repeated_hour_is_tracked_per_cpe_when_cpes_interleave():
    lines = [reading(t, day="20261025", cpe=cpe) for t in AUTUMN_TIMES for cpe in (CPE, OTHER_CPE)]

    sgl_file = parse_sgl(sgl(*lines))

    assert sgl_file.valid, sgl_file.errors
    for cpe in (CPE, OTHER_CPE):
        assert [r.start for r in sgl_file.records if r.cpe == cpe] == AUTUMN_UTC


def test_autumn_hour_first_seen_after_a_later_day_is_still_summer_time():
    # going back to an earlier date is not going back in that date's hours
    sgl_file = parse_sgl(sgl(reading("0200", day="20261026"), reading("0100", day="20261025")))

    assert [record.start for record in sgl_file.records] == [
        utc(2026, 10, 26, 2, 0),
        utc(2026, 10, 25, 0, 0),
    ]


def test_autumn_hour_given_a_third_time_is_a_duplicate():
    times = [*AUTUMN_TIMES[:6], "0100"]

    sgl_file = parse_sgl(sgl(*(reading(t, day="20261025") for t in times)))

    assert error_lines(sgl_file) == [8]
    assert "duplicate reading" in sgl_file.errors[0].message
    assert "line 7 already has it" in sgl_file.errors[0].message


def test_autumn_line_repeated_at_once_is_a_duplicate_not_the_winter_hour():
    # only going backwards marks the second pass; the same time twice in a row is a resent line
    times = ["0100", "0115", "0115"]

    sgl_file = parse_sgl(sgl(*(reading(t, day="20261025") for t in times)))

    assert error_lines(sgl_file) == [4]
    assert "duplicate reading" in sgl_file.errors[0].message


# --- bytes that are not text -------------------------------------------------------------------


def test_a_nul_byte_is_named_by_line_and_column_and_no_record_carries_it():
    # given a reading whose CPE holds a NUL, between two good ones
    bad = reading("0015", cpe="PT00020000\x001110001AA")
    sgl_file = parse_sgl(sgl(reading("0000"), bad, reading("0030")))

    # then the file is refused, the line named, and no text anywhere holds the NUL
    assert not sgl_file.valid
    assert error_lines(sgl_file)[0] == 3
    assert sgl_file.errors[0].message == (
        "line 3: holds a NUL byte (column 13); the file must be text"
    )
    assert not any("\x00" in e.message for e in sgl_file.errors)
    assert not any("\x00" in r.cpe for r in sgl_file.records)
