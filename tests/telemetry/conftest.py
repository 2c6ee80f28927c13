import pytest

from energy_portal.redis_client import sync_client
from telemetry.services import INGEST_STREAM
from telemetry.writer import DEAD_LETTER_STREAM


@pytest.fixture
def ingest_stream():
    """The Redis ingest stream, empty before and after the test."""
    client = sync_client()
    client.delete(INGEST_STREAM, DEAD_LETTER_STREAM)
    yield client
    client.delete(INGEST_STREAM, DEAD_LETTER_STREAM)


def stream_rows(client) -> list[list]:
    """Every [sensor_id, epoch_us, value] row waiting in the stream, in order."""
    import json

    rows = []
    for _id, fields in client.xrange(INGEST_STREAM):
        rows.extend(json.loads(fields[b"rows"]))
    return rows
