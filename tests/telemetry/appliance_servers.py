"""Real HTTP servers standing in for IoT appliances, each in a thread on 127.0.0.1:<free port>.

- `healthy`: answers `answers[path]` as JSON (404 for a path it was not given).
- `slow`: answers like a healthy one, but only after `delay` seconds.
- `garbage`: answers 200 with a body that is not JSON.
- `error`: answers HTTP 500.
"""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ApplianceServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a slow answer still sleeping must not hold up the test's teardown

    def __init__(self, behaviour: str, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.delay = delay
        self.answers: dict[str, object] = {}
        self.requests: list[str] = []
        self.stopping = threading.Event()

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: ApplianceServer

    def do_GET(self) -> None:
        server = self.server
        server.requests.append(self.path)
        if server.behaviour == "error":
            self._send(500, b'{"error": "internal error"}')
        elif server.behaviour == "garbage":
            self._send(200, b"<html>\x00\xffnot json at all", content_type="text/html")
        else:
            if server.behaviour == "slow" and server.stopping.wait(server.delay):
                return
            if self.path not in server.answers:
                self._send(404, b'{"error": "no such appliance"}')
            else:
                self._send(200, json.dumps(server.answers[self.path]).encode())

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the poller gave up waiting
            pass

    def log_message(self, format: str, *args) -> None:
        pass


@contextmanager
def appliance_server(
    behaviour: str = "healthy", *, delay: float = 5.0
) -> Iterator[ApplianceServer]:
    """A running appliance server of the given behaviour, shut down on exit."""
    server = ApplianceServer(behaviour, delay)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"appliance-{behaviour}"
    )
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
