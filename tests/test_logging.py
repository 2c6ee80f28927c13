"""Quiet, honest logs: each expected refusal is one line from Django, never a traceback.

Read from a real server's output, as an operator reads it: the access line of the server plus
at most one line of Django's saying why, and server errors still log their traceback.
"""

import http.client
import json
import logging
import sys
import time

import pytest
from websockets.sync.client import connect

from django.utils.module_loading import import_string

from devices.models import Device
from energy_portal.log_filters import RefusalWithoutTraceback, SocketChatterDropped
from tests.devices.test_consumers import session_cookie
from tests.e2e import servers

pytestmark = pytest.mark.django_db(transaction=True)


def get(server: servers.Server, path: str, headers: dict[str, str]) -> int:
    client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        client.request("GET", path, headers=headers)
        return client.getresponse().status
    finally:
        client.close()


def django_lines(output: str, path: str) -> list[str]:
    """Django's lines about `path` (the server's own access lines start with INFO:)."""
    return [line for line in output.splitlines() if path in line and " django." in line]


def test_expected_refusals_log_one_line_each_and_no_traceback(
    portal, alice, alice_home, api_token_for
):
    # given: a resident's session and API token
    cookie = {"Cookie": f"sessionid={session_cookie(alice)}"}
    token = {"Authorization": f"Token {api_token_for(alice)}"}
    refusals = [
        ("/fleet/", cookie, 403),  # a page for operators: PermissionDenied in the view
        ("/no-such-page/", cookie, 404),
        ("/api/v1/sites/", {}, 401),
        ("/api/v1/stats/?sensor=pi-a1.power_w&start=later", token, 400),
        ("/api/v1/health/?bad-host", {"Host": "evil.example"}, 400),  # DisallowedHost
    ]

    # when: each is asked for once
    statuses = [get(portal, path, headers) for path, headers, _ in refusals]

    # then: each got its refusal, and Django said why in one line, without a traceback
    assert statuses == [status for _, _, status in refusals]
    output = portal.output()
    assert "Traceback" not in output
    for path, _, _ in refusals[:4]:
        assert len(django_lines(output, path.split("?")[0])) == 1, output
    assert len([line for line in output.splitlines() if "Invalid HTTP_HOST" in line]) == 1


def record(status_code: int | None, *, with_exception: bool) -> logging.LogRecord:
    try:
        raise ValueError("why")
    except ValueError:
        exc_info = sys.exc_info() if with_exception else None
    entry = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "m", (), exc_info)
    if status_code is not None:
        entry.status_code = status_code
    return entry


@pytest.mark.parametrize(
    ("status_code", "keeps_traceback"), [(403, False), (400, False), (500, True), (None, True)]
)
def test_only_refusals_lose_their_traceback(status_code, keeps_traceback):
    entry = record(status_code, with_exception=True)

    assert RefusalWithoutTraceback().filter(entry) is True
    assert (entry.exc_info is not None) is keeps_traceback


def test_a_device_socket_logs_its_handshake_and_no_bare_open_or_close_line(portal, alice_home):
    start = len(portal.output())
    device = alice_home["device"]
    headers = {"Authorization": f"Bearer {alice_home['token']}"}
    with connect(f"{portal.ws}/ws/devices/", additional_headers=headers) as pi:
        pi.send(json.dumps({"type": "settle"}))
        assert json.loads(pi.recv(timeout=5))["code"] == "unknown_type"
    deadline = time.monotonic() + 5
    while Device.objects.get(pk=device.pk).online and time.monotonic() < deadline:
        time.sleep(0.05)  # the socket's end handled

    lines = portal.output()[start:].splitlines()
    assert [line for line in lines if "/ws/devices/" in line and "[accepted]" in line], lines
    assert not [line for line in lines if line.endswith(("connection open", "connection closed"))]


@pytest.mark.parametrize(
    ("message", "kept"),
    [("connection open", False), ("connection closed", False), ("connection open!", True)],
)
def test_only_the_bare_socket_lines_are_dropped(message, kept):
    entry = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, message, (), None)
    assert SocketChatterDropped().filter(entry) is kept


# ---------------------------------------------------------------------------------------------
# LOG_FORMAT=json: one JSON object per line


@pytest.fixture
def json_portal(tmp_path, django_db_setup):
    from django.conf import settings
    from django.db import connection

    server = servers.spawn(
        database_url=servers.database_url(connection.settings_dict),
        redis_url=settings.REDIS_URL,
        log_dir=tmp_path,
        extra_env={"LOG_FORMAT": "json"},
    )
    try:
        servers.wait_until_answering(server)
        yield server
    finally:
        servers.stop(server)


def test_json_logs_are_one_object_per_line_from_django_and_the_server(json_portal):
    # when: a page that is not there and one that is
    assert get(json_portal, "/no-such-page/", {}) == 404
    assert get(json_portal, "/api/v1/health/", {}) == 200
    servers.stop(json_portal)  # its last lines written

    # then: every line is a JSON object with when, how bad, who and what
    lines = [line for line in json_portal.output().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries), lines
    assert not any("color_message" in entry for entry in entries)
    not_found = [e for e in entries if e["logger"] == "django.request"]
    assert [e["message"] for e in not_found] == ["Not Found: /no-such-page/"]
    assert not_found[0]["level"] == "WARNING"
    assert not_found[0]["status_code"] == 404  # the record's extras are fields
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert any("/api/v1/health/" in e["message"] and "200" in e["message"] for e in access)


def test_a_json_line_carries_its_traceback_in_a_field_and_stays_one_line():
    from django.conf import settings

    config = {**settings.LOGGING["formatters"]["json"]}
    formatter = import_string(config.pop("()"))(**config)
    entry = record(500, with_exception=True)

    line = formatter.format(entry)

    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING"
    assert parsed["logger"] == "django.request"
    assert "ValueError: why" in parsed["exc_info"]
    assert "Traceback" in parsed["exc_info"]
