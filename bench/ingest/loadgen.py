"""HTTP load generator of the ingest benchmark (a separate process, started by `run.py`).

    python -m bench.ingest.loadgen --plan plan.json --out out.json

`clients` concurrent asyncio clients (httpx, one keep-alive connection each) POST batches of
`batch_items` readings to `/api/v1/ingest/` with an API token, back to back, for `duration_s`.
Client c owns a disjoint slice of the sensors; each batch is its slice at the next `k` time steps
(k = batch_items / slice size), so every reading sent is new and the table must end up with
exactly the accepted count. Bodies are built from pre-encoded fragments, which keeps the
generator's CPU per reading small next to the server's.

Writes every request (start, end, status, accepted, rejected) and the last time step used.
"""

import argparse
import asyncio
import json
import sys
import time

import httpx

from bench.ingest.rows import STEP_US, rfc3339, value_of


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}   loadgen: {message}", file=sys.stderr, flush=True)


class Client:
    def __init__(self, number: int, plan: dict, sensors: list[tuple[int, str]], started: float):
        self.number = number
        self.plan = plan
        self.sensors = sensors  # (index in the whole sensor list, public id)
        self.prefixes = [(i, f'{{"sensor_id":"{pid}","timestamp":"') for i, pid in sensors]
        self.steps_per_batch = max(1, plan["batch_items"] // len(sensors))
        self.step = plan["first_step"]
        self.started = started
        self.records: list[list] = []

    def body(self) -> bytes:
        parts = []
        for step in range(self.step, self.step + self.steps_per_batch):
            ts = rfc3339(self.plan["base_us"] + step * STEP_US)
            for index, prefix in self.prefixes:
                parts.append(f'{prefix}{ts}","value":{value_of(index, step)!r}}}')
        self.step += self.steps_per_batch
        return ("[" + ",".join(parts) + "]").encode()

    async def run(self, http: httpx.AsyncClient, deadline: float) -> None:
        headers = {
            "Authorization": f"Token {self.plan['token']}",
            "Content-Type": "application/json",
        }
        urls = self.plan["urls"]
        url = urls[self.number % len(urls)]
        while time.monotonic() < deadline:
            body = self.body()
            t0 = time.monotonic()
            try:
                response = await http.post(url, content=body, headers=headers)
                status = response.status_code
                data = response.json() if status == 202 else {}
                accepted = data.get("accepted", 0)
                rejected = len(data.get("rejected", []))
                error = "" if status == 202 else response.text[:200]
            except httpx.HTTPError as exc:
                status, accepted, rejected, error = 0, 0, 0, repr(exc)[:200]
            t1 = time.monotonic()
            self.records.append(
                [
                    round(t0 - self.started, 4),
                    round(t1 - self.started, 4),
                    status,
                    accepted,
                    rejected,
                    error,
                ]
            )
            if status != 202:
                await asyncio.sleep(0.2)  # do not spin on a failing server


async def main_async(plan: dict) -> dict:
    sensors = list(enumerate(plan["public_ids"]))
    n = plan["clients"]
    slices = [sensors[c::n] for c in range(n)]
    started = time.monotonic()
    clients = [Client(c, plan, slices[c], started) for c in range(n)]
    deadline = started + plan["duration_s"]
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    timeout = httpx.Timeout(plan.get("request_timeout_s", 60))
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        tasks = [asyncio.create_task(c.run(http, deadline)) for c in clients]
        last = 0
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
            if elapsed - last >= 5:
                last = elapsed
                done = sum(r[3] for c in clients for r in c.records)
                _log(f"{elapsed:4.0f}s: {done:,} readings accepted ({done / elapsed:,.0f}/s)")
        for t in tasks:
            t.result()
    return {
        "records": [r for c in clients for r in c.records],
        "last_step": max(c.step for c in clients),
        "steps_per_batch": [c.steps_per_batch for c in clients],
        "items_per_batch": [c.steps_per_batch * len(c.sensors) for c in clients],
        "seconds": round(time.monotonic() - started, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.plan) as f:
        plan = json.load(f)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main_async(plan))
    else:
        result = uvloop.run(main_async(plan))
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
