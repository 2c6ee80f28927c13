"""Request bodies over REQUEST_MAX_BODY_BYTES are refused as they arrive, over a real server.

Each big request is written as a hostile client would: up to 256 MiB, in 64 KiB pieces, with
the socket checked for an answer between pieces. The server must answer 413 and close long
before the client is done, without holding the body in memory; a body under the limit is
served as before, chunked or not.
"""

import http.client
import json
import re
import select
import socket
from collections.abc import Iterable, Iterator
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest

from django.conf import global_settings, settings

from tests.conftest import PASSWORD
from tests.devices.test_consumers import clean_redis  # noqa: F401 (a fixture, used by name)
from tests.e2e import servers

pytestmark = pytest.mark.django_db(transaction=True)

PIECE = b"\0" * 65536
HOSTILE_BYTES = 256 * 1024 * 1024
# What the kernel's socket buffers (both ends, loopback) may take in before the server's answer
# reaches the client: the bytes a client sends past the limit are bounded by these, not by it.
SOCKET_BUFFERS_SLACK = 32 * 1024 * 1024


def peak_memory_bytes(server: servers.Server) -> int:
    """The server process's peak resident memory so far (VmHWM)."""
    status = open(f"/proc/{server.process.pid}/status").read()  # noqa: SIM115
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def chunked(pieces: Iterator[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def hostile_body() -> Iterator[bytes]:
    for _ in range(HOSTILE_BYTES // len(PIECE)):
        yield PIECE


def send_until_answered(
    server: servers.Server, head: bytes, body: Iterable[bytes]
) -> tuple[bytes, int]:
    """Write `head`, then `body` piece by piece until the server answers or stops reading; return
    the answer and how many body bytes were written before it came."""
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for piece in body:
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: its answer is already in our buffer
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, sent


def post_head(path: str, *, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_a_chunked_body_over_the_limit_is_refused_with_413_while_it_arrives(portal, alice_home):
    # given: a device that may ingest, and the server's memory peak so far
    peak_before = peak_memory_bytes(portal)
    head = post_head(
        "/api/v1/ingest/",
        headers={
            "Authorization": f"Bearer {alice_home['token']}",
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
    )

    # when: it streams a 256 MiB body with no declared length
    answer, sent = send_until_answered(portal, head, chunked(hostile_body()))

    # then: a JSON 413 came once a little more than the limit had been read
    status, body = status_and_body(answer)
    assert status == 413
    assert json.loads(body)["detail"].startswith("Request body too large: at most")
    assert (
        settings.REQUEST_MAX_BODY_BYTES
        < sent
        < settings.REQUEST_MAX_BODY_BYTES + SOCKET_BUFFERS_SLACK
    )
    assert peak_memory_bytes(portal) - peak_before < settings.REQUEST_MAX_BODY_BYTES
    assert "Traceback" not in portal.output()


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(portal):
    peak_before = peak_memory_bytes(portal)
    head = post_head(
        "/login/",
        headers={"Content-Type": "text/plain", "Content-Length": str(HOSTILE_BYTES)},
    )

    answer, sent = send_until_answered(portal, head, hostile_body())

    status, body = status_and_body(answer)
    assert status == 413
    assert body.startswith(b"Request body too large: at most")  # text, not JSON, off the API
    assert sent < SOCKET_BUFFERS_SLACK
    assert peak_memory_bytes(portal) - peak_before < settings.REQUEST_MAX_BODY_BYTES
    assert "Traceback" not in portal.output()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_batch_under_the_limit_is_ingested(portal, alice_home, clean_redis, framing):  # noqa: F811
    items = [
        {"sensor_id": "pi-a1.power_w", "timestamp": f"2026-11-22T10:{i // 60:02}:{i % 60:02}Z",
         "value": float(i)}
        for i in range(3000)
    ]  # fmt: skip
    payload = json.dumps(items).encode()
    headers = {
        "Authorization": f"Bearer {alice_home['token']}",
        "Content-Type": "application/json",
        "Connection": "close",
    }
    if framing == "chunked":  # no declared length: the API must still read the whole list
        headers["Transfer-Encoding"] = "chunked"
        body = chunked(payload[i : i + 65536] for i in range(0, len(payload), 65536))
    else:
        headers["Content-Length"] = str(len(payload))
        body = [payload]

    answer, _ = send_until_answered(portal, post_head("/api/v1/ingest/", headers=headers), body)

    status, response = status_and_body(answer)
    assert status == 202, answer[:500]
    assert json.loads(response)["accepted"] == 3000


def test_a_chunked_form_under_the_limit_is_read_whole(portal, alice, settings):
    # given: alice's password hashed as the server checks it, and the login page's CSRF token
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    alice.set_password(PASSWORD)
    alice.save(update_fields=["password"])
    page = http.client.HTTPConnection("127.0.0.1", portal.port, timeout=10)
    page.request("GET", "/login/")
    login = page.getresponse()
    cookie = SimpleCookie(login.getheader("Set-Cookie"))["csrftoken"].value
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', login.read()).group(1)
    page.close()
    # a megabyte of padding after the fields: the form is only valid if all of it was read
    form = urlencode(
        {
            "csrfmiddlewaretoken": token,
            "username": "alice",
            "password": PASSWORD,
            "pad": "x" * 2**20,
        }
    ).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"csrftoken={cookie}",
        "Transfer-Encoding": "chunked",
        "Connection": "close",
    }
    pieces = (form[i : i + 65536] for i in range(0, len(form), 65536))

    # when: it is sent chunked, with no declared length
    answer, _ = send_until_answered(portal, post_head("/login/", headers=headers), chunked(pieces))

    # then: the CSRF token and the credentials were read and alice is signed in
    status, _ = status_and_body(answer)
    assert status == 302, answer[:500]
    assert b"sessionid=" in answer


def test_the_limit_is_above_the_ingest_limit_so_ingest_keeps_its_own_answer():
    assert settings.REQUEST_MAX_BODY_BYTES > settings.INGEST_MAX_BODY_BYTES
