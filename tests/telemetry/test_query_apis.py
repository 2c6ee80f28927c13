"""GET /api/v1/readings/, aggregates/ and stats/: pagination, CSV, scoping, validation, DST."""

import csv
import io
import math
import zoneinfo
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from django.contrib.auth.models import Permission
from django.db import connections, transaction

from telemetry import query_apis, rollups
from telemetry.services import readings_insert
from telemetry.writer import Batch, Writer

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
T0 = datetime(2026, 6, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SENSOR = "pi-a1.power_w"


def _us(ts: datetime) -> int:
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _z(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def insert(sensor_id: int, points: list[tuple[datetime, float]]) -> None:
    with transaction.atomic():
        readings_insert(
            sensor_ids=[sensor_id] * len(points),
            times_us=[_us(t) for t, _ in points],
            values=[v for _, v in points],
        )


@pytest.fixture
def power(alice_home) -> int:
    return alice_home["device"].sensors.get(key="power_w").id


@pytest.fixture
def alice_api(alice, api_client_for):
    return api_client_for(alice)


def _q(**params) -> str:
    return "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())


# --- readings -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_readings_pages_walk_the_range_in_order_without_gaps_or_repeats(power, alice_api):
    # given 2,345 readings, one every 7 s, inserted out of order
    times = [T0 + timedelta(seconds=7 * i) for i in range(2345)]
    insert(power, [(t, float(i)) for i, t in reversed(list(enumerate(times)))])
    start, end = times[10], times[2300]  # end is exclusive
    url = f"/api/v1/readings/?{_q(sensor=SENSOR, start=_z(start), end=_z(end), page_size=500)}"
    # when following `next` to the end
    seen, pages = [], 0
    while url:
        response = alice_api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        assert len(body["results"]) <= 500
        seen += body["results"]
        url, pages = body["next"], pages + 1
    # then
    assert pages == 5
    assert [r["time"] for r in seen] == [_z(t) for t in times[10:2300]]
    assert [r["value"] for r in seen] == [float(i) for i in range(10, 2300)]
    assert body["sensor"] == SENSOR and body["unit"] == "W"


@pytest.mark.django_db
def test_a_page_costs_a_fixed_number_of_queries(power, alice_api, django_assert_max_num_queries):
    insert(power, [(T0 + timedelta(seconds=i), 1.0) for i in range(3000)])
    query = _q(sensor=SENSOR, start=_z(T0), end=_z(T0 + timedelta(days=1)))
    for path in ("readings", "aggregates", "stats"):
        extra = "&bucket=15m" if path == "aggregates" else ""
        # token, operator check, sensor, data
        with django_assert_max_num_queries(4):
            response = alice_api.get(f"/api/v1/{path}/?{query}{extra}")
        assert response.status_code == 200, (path, response.content)


@pytest.mark.django_db
def test_readings_stream_as_csv_in_keyset_chunks(power, alice_api, monkeypatch):
    monkeypatch.setattr(query_apis, "CSV_CHUNK", 100)
    insert(power, [(T0 + timedelta(seconds=i), i / 2) for i in range(250)])
    query = _q(sensor=SENSOR, start=_z(T0), end=_z(T0 + timedelta(hours=1)))
    for response in (
        alice_api.get(f"/api/v1/readings/?{query}&format=csv"),
        alice_api.get(f"/api/v1/readings/?{query}", HTTP_ACCEPT="text/csv"),
    ):
        assert response.status_code == 200
        assert response.streaming
        assert response["Content-Type"].startswith("text/csv")
        assert "attachment" in response["Content-Disposition"]
        chunks = [c.decode() for c in response.streaming_content]
        assert len(chunks) == 4  # header + 3 keyset chunks of at most 100 rows
        rows = list(csv.reader(io.StringIO("".join(chunks))))
        assert rows[0] == ["time", "value"]
        assert rows[1] == [_z(T0), "0.0"]
        assert len(rows) == 251
        assert [float(r[1]) for r in rows[1:]] == [i / 2 for i in range(250)]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_csv_streams_chunk_by_chunk_to_an_asgi_server(
    alice_home, alice, api_token_for, monkeypatch
):
    from asgiref.sync import sync_to_async

    from django.test import AsyncClient

    monkeypatch.setattr(query_apis, "CSV_CHUNK", 10)
    power = await sync_to_async(lambda: alice_home["device"].sensors.get(key="power_w").id)()
    await sync_to_async(insert)(power, [(T0 + timedelta(seconds=i), 1.0) for i in range(25)])
    token = await sync_to_async(api_token_for)(alice)
    query = _q(sensor=SENSOR, start=_z(T0), end=_z(T0 + timedelta(hours=1)), format="csv")
    try:
        response = await AsyncClient().get(
            f"/api/v1/readings/?{query}", headers={"authorization": f"Token {token}"}
        )
        assert response.status_code == 200
        assert response.is_async  # served lazily, not read to the end first
        chunks = [chunk async for chunk in response.streaming_content]
    finally:
        await sync_to_async(connections.close_all)()
    assert len(chunks) == 4
    assert b"".join(chunks).count(b"\n") == 26


# --- aggregates and stats -----------------------------------------------------------------------


@pytest.mark.django_db
def test_aggregates_and_stats_answer_from_rollups_and_the_fresh_tail(power, alice_api):
    # given two hours of readings, half of them rolled up and half still only raw
    points = [(T0 + timedelta(minutes=i), float(i % 7)) for i in range(120)]
    insert(power, points[:60])
    rollups.rollups_refresh(now=T0 + timedelta(days=1))
    insert(power, points[60:])
    query = _q(sensor=SENSOR, start=_z(T0), end=_z(T0 + timedelta(hours=2)))
    # when
    hourly = alice_api.get(f"/api/v1/aggregates/?{query}&bucket=1h").json()
    stats = alice_api.get(f"/api/v1/stats/?{query}").json()
    # then
    assert [r["bucket"] for r in hourly["results"]] == [_z(T0), _z(T0 + timedelta(hours=1))]
    for row, hour in zip(hourly["results"], (points[:60], points[60:]), strict=True):
        values = [v for _, v in hour]
        assert row["count"] == 60
        assert row["sum"] == sum(values)
        assert (row["min"], row["max"]) == (min(values), max(values))
        assert math.isclose(row["avg"], sum(values) / 60)
    values = [v for _, v in points]
    assert stats["count"] == 120
    assert (stats["min"], stats["max"], stats["sum"]) == (0.0, 6.0, sum(values))
    assert math.isclose(stats["avg"], sum(values) / 120)


@pytest.mark.django_db
def test_stats_of_an_empty_range_are_null_with_count_zero(power, alice_api):
    query = _q(sensor=SENSOR, start=_z(T0), end=_z(T0 + timedelta(hours=2)))
    body = alice_api.get(f"/api/v1/stats/?{query}").json()
    assert body["count"] == 0
    assert body["min"] is None and body["avg"] is None


@pytest.mark.django_db
def test_aggregates_export_as_csv(power, alice_api):
    insert(power, [(T0 + timedelta(minutes=i), 2.0) for i in range(30)])
    query = _q(sensor=SENSOR, start=_z(T0), end=_z(T0 + timedelta(hours=1)), bucket="15m")
    response = alice_api.get(f"/api/v1/aggregates/?{query}&format=csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["bucket", "avg", "min", "max", "sum", "count"]
    assert rows[1] == [_z(T0), "2.0", "2.0", "2.0", "30.0", "15"]
    assert len(rows) == 3


@pytest.fixture
def drain(ingest_stream):
    """Run the batch writer until the ingest stream is empty."""

    def run() -> None:
        writer = Writer(name="test-writer", max_age_s=0, client=ingest_stream)
        writer.ensure_group()
        batch = Batch()
        for _ in range(100):
            batch = writer.run_once(batch, block_ms=5)
            if not batch.ids and ingest_stream.xlen("ep:ingest") == 0:
                return

    return run


@pytest.mark.django_db
def test_known_sums_posted_through_the_api_come_back_per_local_hour_across_a_clock_change(
    alice, alice_home, api_client_for, drain
):
    # given a quarter-hourly reading of known value over Lisbon's 25-hour day (2026-10-25),
    # posted through the ingest API and written by the batch writer
    alice.user_permissions.add(Permission.objects.get(codename="ingest_readings"))
    client = api_client_for(alice)
    day_start = datetime(2026, 10, 25, tzinfo=LISBON).astimezone(UTC)
    quarters = [day_start + timedelta(minutes=15 * i) for i in range(100)]
    body = [
        {"sensor_id": SENSOR, "timestamp": _z(t), "value": i % 4 + 1}
        for i, t in enumerate(quarters)
    ]
    assert client.post("/api/v1/ingest/", body, format="json").json()["accepted"] == 100
    drain()
    query = _q(
        sensor=SENSOR, start="2026-10-25T00:00:00+01:00", end="2026-10-26T00:00:00Z",
        tz="Europe/Lisbon",
    )  # fmt: skip
    for refreshed in (False, True):
        if refreshed:
            rollups.rollups_refresh(now=datetime(2026, 11, 1, tzinfo=UTC))
        # when
        hours = client.get(f"/api/v1/aggregates/?{query}&bucket=1h").json()["results"]
        [day] = client.get(f"/api/v1/aggregates/?{query}&bucket=1d").json()["results"]
        # then 25 local hours, 01:00 twice (summer time, then winter time), each 1+2+3+4
        assert len(hours) == 25
        assert [h["bucket"][11:] for h in hours[1:3]] == ["01:00:00+01:00", "01:00:00+00:00"]
        assert all((h["count"], h["sum"]) == (4, 10.0) for h in hours)
        assert (day["bucket"], day["count"], day["sum"]) == (
            "2026-10-25T00:00:00+01:00",
            100,
            250.0,
        )


# --- who may see what ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["readings", "aggregates", "stats"])
def test_a_resident_gets_404_for_another_residents_sensor(path, alice_home, bob, api_client_for):
    query = _q(sensor=SENSOR, start=_z(T0), end=_z(T0 + timedelta(hours=1)), bucket="1h")
    response = api_client_for(bob).get(f"/api/v1/{path}/?{query}")
    assert response.status_code == 404
    assert SENSOR in response.json()["detail"]
    assert api_client_for(None).get(f"/api/v1/{path}/?{query}").status_code == 401


@pytest.mark.django_db
def test_operators_see_every_sensor(alice_home, operator, api_client_for):
    query = _q(sensor=SENSOR, start=_z(T0), end=_z(T0 + timedelta(hours=1)))
    assert api_client_for(operator).get(f"/api/v1/stats/?{query}").status_code == 200


# --- bad input ----------------------------------------------------------------------------------

START, END = "2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "params", "field", "says"),
    [
        ("readings", {"start": START, "end": END}, "sensor", "Name the sensor"),
        ("readings", {"sensor": "nodot", "start": START, "end": END}, "sensor", "<device uid>"),
        ("readings", {"sensor": SENSOR, "end": END}, "start", "Give start"),
        ("stats", {"sensor": SENSOR, "start": "yesterday", "end": END}, "start", "RFC 3339"),
        ("stats", {"sensor": SENSOR, "start": "2026-06-01T00:00:00", "end": END}, "start", "zone"),
        ("stats", {"sensor": SENSOR, "start": "2026-06-01", "end": END}, "start", "RFC 3339"),
        ("stats", {"sensor": SENSOR, "start": END, "end": START}, "end", "after start"),
        ("stats", {"sensor": SENSOR, "start": START, "end": START}, "end", "after start"),
        ("aggregates", {"sensor": SENSOR, "start": START, "end": END}, "bucket", "15m, 1h or 1d"),
        (
            "aggregates",
            {"sensor": SENSOR, "start": START, "end": END, "bucket": "5m"},
            "bucket",
            "'5m' is not a bucket",
        ),
        (
            "aggregates",
            {"sensor": SENSOR, "start": START, "end": END, "bucket": "1h", "tz": "Mars/Olympus"},
            "tz",
            "IANA",
        ),
        (
            "aggregates",
            {"sensor": SENSOR, "start": "2020-01-01T00:00:00Z", "end": END, "bucket": "15m"},
            "end",
            "At most 10000 buckets",
        ),
        (
            "readings",
            {"sensor": SENSOR, "start": START, "end": END, "page_size": 0},
            "page_size",
            "",
        ),
        (
            "readings",
            {"sensor": SENSOR, "start": START, "end": END, "page_size": 10_001},
            "page_size",
            "",
        ),
        (
            "readings",
            {"sensor": SENSOR, "start": START, "end": END, "cursor": "%%"},
            "cursor",
            "next",
        ),
        (
            "readings",
            {"sensor": SENSOR, "start": "9999-12-31T23:59:59-01:00", "end": END},
            "start",
            "RFC 3339",
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_field(alice_home, alice_api, path, params, field, says):
    response = alice_api.get(f"/api/v1/{path}/?{_q(**params)}")
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body["errors"], body
    assert says in " ".join(body["errors"][field]), body


@pytest.mark.django_db
def test_an_unknown_sensor_is_a_404_and_errors_stay_json_when_csv_was_asked(alice_api):
    query = _q(sensor="pi-zz.power_w", start=START, end=END)
    response = alice_api.get(f"/api/v1/readings/?{query}&format=csv")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "pi-zz.power_w" in response.json()["detail"]


@pytest.mark.django_db
def test_an_unencoded_plus_of_an_offset_is_understood(power, alice_api):
    insert(power, [(T0, 5.0)])
    # `+01:00` typed into a URL arrives as ` 01:00`
    url = f"/api/v1/stats/?sensor={SENSOR}&start=2026-06-01T00:00:00+01:00&end={END}"
    body = alice_api.get(url).json()
    assert (body["start"], body["count"]) == ("2026-05-31T23:00:00Z", 1)


@pytest.mark.django_db
@pytest.mark.parametrize("start", ["2026-06-01 00:00:00z", "2026-06-01t01:00:00+01:00"])
def test_rfc_3339_lower_case_and_space_forms_are_accepted(power, alice_api, start):
    insert(power, [(T0, 5.0)])
    body = alice_api.get(f"/api/v1/stats/?{_q(sensor=SENSOR, start=start, end=END)}").json()
    assert (body["start"], body["count"]) == ("2026-06-01T00:00:00Z", 1)


@pytest.mark.django_db
def test_the_schema_documents_the_query_endpoints(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    for path in ("readings", "aggregates", "stats"):
        params = {p["name"] for p in schema["paths"][f"/api/v1/{path}/"]["get"]["parameters"]}
        assert {"sensor", "start", "end"} <= params
