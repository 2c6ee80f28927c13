"""Quiet, honest logs: each expected refusal is one line from Django, never a traceback.

Read from a real server's output, as an operator reads it: the access line of the server plus
at most one line of Django's saying why, and server errors still log their traceback.
"""

import http.client
import logging
import sys

import pytest

from energy_portal.log_filters import RefusalWithoutTraceback
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
