"""A bound on request bodies, enforced as their bytes arrive, in front of every HTTP route.

Django reads a whole body (spooling it to a temporary file past 2.5 MB) before any view or
setting can look at it, so a client could make any URL take in a gigabyte. This ASGI middleware
counts the body's bytes as the server hands them over and refuses with 413 as soon as the count
passes `settings.REQUEST_MAX_BODY_BYTES`, or at once when Content-Length already says so; the
connection is closed, so the rest of the body is never read. Chunked bodies, which declare no
length, are counted the same way, and once whole (within the limit) are handed on with the
Content-Length they turned out to have: Django REST framework reads a request without one as
empty, so a chunked batch to the ingest API was answered "Send a JSON list".
"""

import json

from django.conf import settings


def _declared_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses malformed lengths itself
    return None


def _is_chunked(scope: dict) -> bool:
    return any(
        name == b"transfer-encoding" and b"chunked" in value.lower()
        for name, value in scope.get("headers", ())
    )


def _refusal(path: str, limit: int) -> tuple[str, bytes]:
    """The 413 answer: JSON in the API's error shape under /api/, a line of text elsewhere."""
    message = f"Request body too large: at most {limit} bytes. Send less, or split it."
    if path.startswith("/api/"):
        return "application/json", json.dumps({"detail": message}).encode()
    return "text/plain; charset=utf-8", message.encode() + b"\n"


class BodyLimitMiddleware:
    """Wraps an ASGI HTTP application; other scope types pass through untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = settings.REQUEST_MAX_BODY_BYTES
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, send, limit)
            return

        if declared is None and _is_chunked(scope):
            await self._call_with_length(scope, receive, send, limit)
            return

        received = 0
        over = False
        started = False

        async def counting_receive():
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # To the application the client has gone: Django stops reading, answers
                    # nothing, and its spooled body is thrown away.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            if over and not started:
                return  # the refusal below answers instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, tracking_send)
        if over and not started:
            await self._refuse(scope, send, limit)

    async def _call_with_length(self, scope, receive, send, limit: int) -> None:
        """Read a chunked body whole (refusing it once past `limit`), then call the application
        with its length declared and the body in one message."""
        pieces, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before the body was complete: nobody to answer
            piece = message.get("body", b"")
            size += len(piece)
            if size > limit:
                await self._refuse(scope, send, limit)
                return
            pieces.append(piece)
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k != b"transfer-encoding"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(size).encode())]}
        whole = [{"type": "http.request", "body": b"".join(pieces), "more_body": False}]

        async def replay():
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, send, limit: int) -> None:
        content_type, body = _refusal(scope["path"], limit)
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            # The server closes the connection after the answer instead of reading the rest.
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
