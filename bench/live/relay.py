"""Baseline: the same fan-out as the portal's live path, written straight on `websockets`.

    python -m bench.live.relay --port 8765 --tokens var/bench-live/relay-tokens.json

Devices connect to /ws/devices/ with `Authorization: Bearer <token>` (token -> site from the JSON
file; a wrong token is refused with 403). Viewers connect to /ws/live/?site=<id>. Each device frame
is parsed as JSON and, for telemetry, forwarded to that site's viewers as the portal does (a JSON
`readings` message with the points) and acked to the device. One process, one event loop, no Redis,
no database, no validation beyond JSON: the ceiling any live path in Python can hope for here.
"""

import argparse
import asyncio
import contextlib
import json
import signal
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tokens", required=True, help="JSON object {token: site id}")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    args = parser.parse_args()
    with open(args.tokens) as f:
        sites_by_token: dict[str, int] = json.load(f)
    viewers: dict[int, set] = {}

    def process_request(connection, request):
        path = urlsplit(request.path).path
        if path == "/ws/devices/":
            scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or token.strip() not in sites_by_token:
                return connection.respond(HTTPStatus.FORBIDDEN, "bad token\n")
            return None
        if path == "/ws/live/":
            return None
        return connection.respond(HTTPStatus.NOT_FOUND, "no such path\n")

    async def device(ws, site: int, uid: str) -> None:
        # The load generator closes without waiting for the closing handshake.
        with contextlib.suppress(ConnectionClosed):
            await device_frames(ws, site, uid)

    async def device_frames(ws, site: int, uid: str) -> None:
        async for text in ws:
            frame = json.loads(text)
            kind = frame.get("type")
            if kind == "telemetry":
                payload = {
                    "type": "readings",
                    "device": uid,
                    "site": site,
                    "points": [{"ts": frame["ts"], "values": frame["values"]}],
                }
                broadcast(viewers.get(site, ()), json.dumps(payload, separators=(",", ":")))
                ack = {"type": "ack", "msg_id": frame.get("msg_id"), "accepted": 1, "rejected": []}
                await ws.send(json.dumps(ack))

    async def viewer(ws, site: int) -> None:
        viewers.setdefault(site, set()).add(ws)
        try:
            await ws.wait_closed()
        finally:
            viewers[site].discard(ws)

    async def handler(ws) -> None:
        url = urlsplit(ws.request.path)
        if url.path == "/ws/devices/":
            token = ws.request.headers["Authorization"].partition(" ")[2].strip()
            await device(ws, sites_by_token[token], uid=f"dev-{token[:8]}")
        else:
            site = parse_qs(url.query).get("site", ["0"])[0]
            await viewer(ws, int(site) if site.isdigit() else 0)

    async def serve_forever() -> None:
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
        # No compression (the portal's servers and the load generator do not negotiate it either).
        async with serve(
            handler, args.host, args.port, process_request=process_request, compression=None
        ):
            print(f"relay listening on {args.host}:{args.port}", flush=True)
            await stop

    if args.uvloop:
        import uvloop

        uvloop.run(serve_forever())
    else:
        asyncio.run(serve_forever())


if __name__ == "__main__":
    main()
