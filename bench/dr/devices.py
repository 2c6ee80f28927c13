"""The simulated devices of the dispatch part: N device sockets (the `websockets` client), each
noting the wall-clock instant each `curtail` and `restore` command reaches it.

    python -m bench.dr.devices --plan PLAN --out OUT

PLAN: {"url", "devices": [{"uid", "token"}], "ready": path, "stop": path, "timeout_s"}. Opens
every socket (64 handshakes at a time), writes `ready`, then listens until every device has its
`restore` or `stop` appears or `timeout_s` passes, and writes {uid: {"curtail": t, "restore": t}}
(epoch seconds) to OUT. A command is answered `done`, as a Pi answers it.
"""

import argparse
import asyncio
import json
import time
from pathlib import Path

import websockets


async def device(
    entry: dict, url: str, got: dict, opened: asyncio.Semaphore, up: list, restored: set
) -> None:
    headers = {"Authorization": f"Bearer {entry['token']}"}
    async with opened:
        ws = await websockets.connect(url, additional_headers=headers, max_queue=None)
    up.append(entry["uid"])
    mine = got.setdefault(entry["uid"], {})
    try:
        async for text in ws:
            at = time.time()
            frame = json.loads(text)
            if frame.get("type") != "command":
                continue
            mine.setdefault(frame["name"], at)
            await ws.send(
                json.dumps({"type": "command_result", "id": frame["id"], "status": "done"})
            )
            if frame["name"] == "restore":
                # Stay connected, as a Pi does: thousands of sockets closing in the second the
                # restores go out would be measured as the restores' delay.
                restored.add(entry["uid"])
    finally:
        await ws.close()


async def main_async(plan: dict) -> dict:
    got: dict[str, dict] = {}
    up: list[str] = []
    restored: set[str] = set()
    opened = asyncio.Semaphore(64)
    tasks = [
        asyncio.create_task(device(e, plan["url"], got, opened, up, restored))
        for e in plan["devices"]
    ]
    while len(up) < len(tasks):
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            raise SystemExit(f"{len(failed)} sockets failed: {failed[0].exception()!r}")
        await asyncio.sleep(0.2)
    Path(plan["ready"]).write_text(str(len(up)))
    deadline = time.monotonic() + plan["timeout_s"]
    stop = Path(plan["stop"])
    while (
        time.monotonic() < deadline
        and not stop.exists()
        and len(restored) < len(tasks)
        and not all(t.done() for t in tasks)
    ):
        await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    plan = json.loads(Path(args.plan).read_text())
    Path(args.out).write_text(json.dumps(asyncio.run(main_async(plan))))


if __name__ == "__main__":
    main()
