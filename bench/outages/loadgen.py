"""Load generator of the outage benchmark: N simulated Pis, and the residents of the sites the
storm cuts watching their dashboards, in one asyncio process.

    python -m bench.outages.loadgen --plan plan.json --out result.json

Started by `bench.outages.run` with a plan (server, sites, timings). Sockets are the small
client of `bench.live.loadgen` (its `Conn`), so the load generator stays cheap.

Phases, against the portal:

1. viewers (the residents of cut sites) and then all devices connect: handshakes per second;
2. baseline: every device sends telemetry at 1 Hz; the ack round trips of the devices the storm
   will spare are the "without storm" figure;
3. storm: the devices of the cut feeders each send `lost` once, at a random moment of the storm
   (`storm_s`, 10 s), stamped with an instant `outage_ago_s` in the past plus that moment, and
   drop their connection once it is acked, without a close frame (their link goes down with the
   mains); the others go on with telemetry (the "during storm" figure, storm and `tail_s`
   after). For each cut site:
   from its `lost` frame to its resident's socket hearing `power` (the report) and `outage`
   (the site's outage opened: what makes the page show the cut). The database is polled until
   every cut feeder has its feeder outage with all its sites: seconds from the last report;
4. restore: every cut device reconnects at once and replays what it buffered: `restored`
   (the instant `outage_s` after its `lost`) and one telemetry batch (`replay_points` readings);
   seconds until each is connected and has every replayed frame acked, then the credit ledger is
   polled until every cut site's outage is paid: settlements per second.

Against the bare relay (`bench.live.relay`) only phase 1 runs (devices): its handshake rate is
the baseline. The load generator reads the database (psycopg, a few counting queries) only to
poll for grid outages and credits; the driver checks the ledger itself at the end.
"""

import argparse
import asyncio
import json
import random
import resource
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psutil
import psycopg

from bench.ingest.procs import CpuMeter
from bench.live.loadgen import Conn, _request, connect_summary, log, summary_ms


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Device:
    __slots__ = ("conn", "entry", "handle", "lost_at", "pending", "replay_left", "seq")

    def __init__(self, entry: dict):
        self.entry = entry
        self.conn: Conn | None = None
        self.handle = None
        self.seq = 0
        self.pending: dict[str, float] = {}  # msg_id -> send time (monotonic)
        self.lost_at: datetime | None = None  # the instant its `lost` said
        self.replay_left = 0


def cpu_meter(plan: dict) -> CpuMeter:
    """bench/ingest's meter over the processes under test (children included), PostgreSQL's
    processes by role, Redis, this load generator ("driver") and the whole machine."""
    servers = psutil.process_iter(["name"])
    redis = next((p.pid for p in servers if p.info["name"] == "redis-server"), None)
    meter = CpuMeter(urlsplit(plan["database_url"]).path.lstrip("/"), redis)
    for name, pid in plan.get("pids", {}).items():
        meter.track(name, [pid])
    return meter


class Bench:
    def __init__(self, plan: dict):
        self.plan = plan
        self.host, self.port = plan["host"], plan["port"]
        self.loop = asyncio.get_running_loop()
        self.devices = [Device(e) for e in plan["entries"]]
        self.cut = [d for d in self.devices if d.entry["affected"]]
        self.spared = [d for d in self.devices if not d.entry["affected"]]
        self.by_site = {d.entry["site"]: d for d in self.devices}
        self.viewers: list[Conn] = []
        self.rtts: list[tuple[float, float, bool]] = []  # (sent, rtt, spared) of telemetry acks
        self.lost_sent: dict[int, float] = {}  # site -> when its lost frame left
        # `shown`: the first message on which the page shows the cut (since outages.js renders a
        # provisional banner from the `power` report, that one; else the site's `outage`).
        self.heard: dict[str, dict[int, float]] = {"power": {}, "outage": {}, "shown": {}}
        self.errors: Counter = Counter()
        self.closes: Counter = Counter()
        self.replayed = asyncio.Event()
        self.replays_left = 0
        self.db: psycopg.Connection | None = None  # the polls' (see _poll)

    # ---- sockets

    async def _open(self, path: str, headers: dict, on_text) -> Conn:
        conn = Conn(_request(self.host, self.port, path, headers), on_text, self._on_close)
        await self.loop.create_connection(lambda: conn, self.host, self.port)
        await conn.ready
        return conn

    async def open_many(self, what: str, jobs: list) -> dict:
        """Open every (path, headers, on_text, done) of `jobs`, `connect_concurrency` at once,
        as a fleet coming back does; handshake durations and the rate."""
        semaphore = asyncio.Semaphore(self.plan.get("connect_concurrency", 100))
        durations: list[float] = []
        failures: Counter = Counter()
        started = time.monotonic()

        async def one(job):
            path, headers, on_text, done = job
            async with semaphore:
                for _attempt in range(5):  # a Pi retries a refused or timed-out handshake
                    t0 = time.monotonic()
                    try:
                        conn = await asyncio.wait_for(self._open(path, headers, on_text), 30)
                    except (TimeoutError, OSError, ConnectionError) as exc:
                        failures[
                            type(exc).__name__ + (f" {exc}" if "HTTP" in str(exc) else "")
                        ] += 1
                        await asyncio.sleep(0.5)
                        continue
                    durations.append(time.monotonic() - t0)
                    await done(conn)
                    return

        await asyncio.gather(*(one(job) for job in jobs))
        return connect_summary(what, len(jobs), durations, failures, time.monotonic() - started)

    def _device_job(self, device: Device, then=None) -> tuple:
        async def done(conn):
            device.conn = conn
            if then is not None:
                then(device)

        headers = {"Authorization": f"Bearer {device.entry['token']}"}
        return ("/ws/devices/", headers, self._device_text(device), done)

    def _viewer_job(self, entry: dict) -> tuple:
        headers = {
            "Cookie": f"sessionid={entry['session']}",
            "Origin": f"http://127.0.0.1:{self.port}",
        }

        async def done(conn):
            self.viewers.append(conn)

        return ("/ws/live/", headers, self._on_viewer_text, done)

    def _on_close(self, conn: Conn) -> None:
        self.closes[str(conn.close_code or "dropped")] += 1

    # ---- frames in

    def _device_text(self, device: Device):
        def on_text(conn: Conn, payload: bytes, now: float) -> None:
            frame = json.loads(payload)
            kind = frame.get("type")
            if kind == "error":
                self.errors[frame.get("code", "?")] += 1
                return
            if kind != "ack":
                return
            msg_id = frame.get("msg_id", "")
            sent = device.pending.pop(msg_id, None)
            if sent is None:
                return
            mono = time.monotonic()
            if msg_id.startswith("t"):
                self.rtts.append((sent, mono - sent, not device.entry["affected"]))
            elif msg_id == "lost":
                # The link goes down with the mains: no close frame, an abrupt end to the
                # server, as its router's death is to a Pi's socket (a suspected outage's stuff).
                conn.open = False
                conn.transport.close()
            elif msg_id.startswith("r"):
                device.replay_left -= 1
                if device.replay_left == 0:
                    self.replays_left -= 1
                    if self.replays_left == 0:
                        self.replayed.set()

        return on_text

    def _on_viewer_text(self, conn: Conn, payload: bytes, now: float) -> None:
        data = json.loads(payload)
        mono = time.monotonic()
        for message in data if isinstance(data, list) else [data]:
            kind = message.get("type")
            heard = self.heard.get(kind)
            site = message.get("site")
            if heard is None or site not in self.lost_sent:
                continue
            if site not in heard:
                heard[site] = mono - self.lost_sent[site]
            shows_cut = kind == "outage" or message.get("state") == "lost"
            if shows_cut and site not in self.heard["shown"]:
                self.heard["shown"][site] = mono - self.lost_sent[site]

    # ---- frames out

    def _send(self, device: Device, msg_id: str, text: str) -> bool:
        if device.conn is None or not device.conn.send_text(text):
            self.errors["send_failed"] += 1
            return False
        device.pending[msg_id] = time.monotonic()
        return True

    def _telemetry(self, device: Device) -> None:
        device.handle = self.loop.call_later(1.0, self._telemetry, device)
        device.seq += 1
        msg_id = f"t{device.seq}"
        self._send(
            device,
            msg_id,
            f'{{"type":"telemetry","msg_id":"{msg_id}","ts":"{iso(datetime.now(UTC))}",'
            f'"values":{{"power_w":{device.seq}.5}}}}',
        )

    def start_telemetry(self, devices: list[Device]) -> None:
        for device in devices:
            device.handle = self.loop.call_later(random.uniform(0, 1), self._telemetry, device)

    def stop_telemetry(self, devices: list[Device]) -> None:
        for device in devices:
            if device.handle is not None:
                device.handle.cancel()
                device.handle = None

    def _lost(self, device: Device, at: datetime) -> None:
        self.stop_telemetry([device])
        device.lost_at = at
        if self._send(
            device, "lost", f'{{"type":"power","msg_id":"lost","state":"lost","ts":"{iso(at)}"}}'
        ):
            self.lost_sent[device.entry["site"]] = time.monotonic()

    def _replay(self, device: Device) -> None:
        restored = device.lost_at + timedelta(seconds=self.plan["outage_s"])
        step = self.plan["outage_s"] / (self.plan["replay_points"] + 1)
        batch = ",".join(
            f'{{"ts":"{iso(device.lost_at + timedelta(seconds=step * (i + 1)))}",'
            f'"values":{{"power_w":0}}}}'
            for i in range(self.plan["replay_points"])
        )
        device.replay_left = 2
        if device.pending.pop("lost", None) is not None:
            # Never acked (the server closed the socket first): a Pi keeps the report and
            # sends it again with the rest, with its own instant.
            self.errors["lost_unacked_resent"] += 1
            device.replay_left += 1
            self._send(
                device,
                "r0",
                f'{{"type":"power","msg_id":"r0","state":"lost","ts":"{iso(device.lost_at)}"}}',
            )
        self._send(
            device,
            "r1",
            f'{{"type":"power","msg_id":"r1","state":"restored","ts":"{iso(restored)}"}}',
        )
        self._send(device, "r2", f'{{"type":"telemetry","msg_id":"r2","batch":[{batch}]}}')

    # ---- the database, polled

    def _poll(self, sql: str, args: list) -> int:
        # One connection kept for every poll: a new one every 50 ms forked a backend each time,
        # CPU taken from the servers under test.
        if self.db is None or self.db.closed:
            self.db = psycopg.connect(self.plan["database_url"], autocommit=True)
        return self.db.execute(sql, args).fetchone()[0]

    async def wait_for(self, what: str, sql: str, args: list, target: int, timeout: float):
        """Poll `sql` (a count) every 50 ms until it reaches `target`; (monotonic time it did,
        or None, and the counts seen with their times)."""
        seen: list[tuple[float, int]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            count = await asyncio.to_thread(self._poll, sql, args)
            now = time.monotonic()
            if not seen or seen[-1][1] != count:
                seen.append((now, count))
            if count >= target:
                return now, seen
            await asyncio.sleep(0.05)
        log(f"{what}: {seen[-1][1] if seen else 0}/{target} after {timeout:.0f} s; gave up")
        return None, seen

    # ---- phases

    def timeline(self, start: float, end: float) -> list[dict]:
        """Per second from `start`: the spared devices' ack round trips (p50, max, ms) of the
        readings sent in it, the `lost` frames sent in it, and the cut sites whose resident
        heard of it in it: where in the storm the time goes."""
        seconds = int(end - start) + 1
        rtts: list[list[float]] = [[] for _ in range(seconds)]
        for sent, rtt, spared in self.rtts:
            if spared and start <= sent < end:
                rtts[int(sent - start)].append(rtt)
        lost, heard = [0] * seconds, [0] * seconds
        for site, sent in self.lost_sent.items():
            if start <= sent < end:
                lost[int(sent - start)] += 1
            shown = self.heard["shown"].get(site)
            if shown is not None and 0 <= sent + shown - start < seconds:
                heard[int(sent + shown - start)] += 1
        rows = []
        for i in range(seconds):
            figures = summary_ms(rtts[i])
            rows.append(
                {"s": i, "acks": figures["count"], "p50": figures["p50"], "max": figures["max"],
                 "lost": lost[i], "shown": heard[i]}
            )  # fmt: skip
        return rows

    def telemetry_rtts(self, start: float, end: float) -> dict:
        return summary_ms(
            [rtt for sent, rtt, spared in self.rtts if spared and start <= sent < end]
        )


async def run_connect_only(plan: dict) -> dict:
    """Devices connect (the handshake rate) and close: the relay baseline, and `--connect-only`."""
    bench = Bench(plan)
    result = {
        "connect": await bench.open_many("devices", [bench._device_job(d) for d in bench.devices])
    }
    for device in bench.devices:
        if device.conn is not None:
            device.conn.close()
    return result


async def run_portal(plan: dict) -> dict:
    bench = Bench(plan)
    result: dict = {"cut_sites": len(bench.cut), "spared_sites": len(bench.spared)}
    result["connect_viewers"] = await bench.open_many(
        "viewers", [bench._viewer_job(d.entry) for d in bench.cut]
    )
    result["connect"] = await bench.open_many(
        "devices", [bench._device_job(d) for d in bench.devices]
    )
    await asyncio.sleep(plan["settle_s"])

    # baseline: telemetry, no storm
    bench.start_telemetry(bench.devices)
    await asyncio.sleep(plan["warmup_s"])
    meter = cpu_meter(plan)
    start, cpu = time.monotonic(), meter.snapshot()
    await asyncio.sleep(plan["baseline_s"])
    result["telemetry_without_storm_ms"] = bench.telemetry_rtts(start, time.monotonic())
    result["cores_without_storm"] = CpuMeter.cores(cpu, meter.snapshot())

    # storm: every cut device reports `lost` once, at a random moment of the storm
    storm_started, cpu = time.monotonic(), meter.snapshot()
    base = datetime.now(UTC) - timedelta(seconds=plan["outage_ago_s"])
    for device in bench.cut:
        offset = random.uniform(0, plan["storm_s"])
        bench.loop.call_later(offset, bench._lost, device, base + timedelta(seconds=offset))
    await asyncio.sleep(plan["storm_s"])
    last_report = max(bench.lost_sent.values(), default=storm_started) + 0.0
    formed, seen = await bench.wait_for(
        "feeder outages",
        *plan["sql"]["feeders_formed"],
        plan["cut_feeders"],
        timeout=plan["form_timeout_s"],
    )
    await asyncio.sleep(plan["tail_s"])
    storm_end = time.monotonic()
    result["cores_during_storm"] = CpuMeter.cores(cpu, meter.snapshot())
    result["telemetry_during_storm_ms"] = bench.telemetry_rtts(storm_started, storm_end)
    result["storm_timeline"] = bench.timeline(storm_started - 5, storm_end)
    result["feeder_outages_formed_s"] = None if formed is None else round(formed - last_report, 3)
    result["feeder_outages_seen"] = [(round(t - last_report, 3), n) for t, n in seen]
    result["lost_sent"] = len(bench.lost_sent)
    result["lost_to_power_ms"] = summary_ms(list(bench.heard["power"].values()))
    result["lost_to_outage_ms"] = summary_ms(list(bench.heard["outage"].values()))
    result["lost_to_shown_ms"] = summary_ms(list(bench.heard["shown"].values()))
    result["viewers_without_outage"] = len(bench.lost_sent) - len(bench.heard["outage"])
    bench.stop_telemetry(bench.devices)
    await asyncio.sleep(1)

    # restore: the cut devices reconnect at once and replay
    bench.replays_left = len(bench.cut)
    restore_started = time.monotonic()
    result["reconnect"] = await bench.open_many(
        "devices (reconnect)", [bench._device_job(d, then=bench._replay) for d in bench.cut]
    )
    try:
        await asyncio.wait_for(bench.replayed.wait(), plan["replay_timeout_s"])
        replayed = time.monotonic()
        result["reconnected_and_replayed_s"] = round(replayed - restore_started, 3)
    except TimeoutError:
        replayed = time.monotonic()
        result["reconnected_and_replayed_s"] = None
        result["replays_missing"] = bench.replays_left
    paid, seen = await bench.wait_for(
        "credits",
        *plan["sql"]["credits"],
        len(bench.cut),
        timeout=plan["settle_timeout_s"],
    )
    if len(seen) >= 2 or paid is not None:
        first = next((t for t, n in seen if n > 0), None)
        last_t, last_n = seen[-1]
        result["settlements"] = {
            "entries": last_n,
            "first_after_replay_s": None if first is None else round(first - replayed, 3),
            "all_after_replay_s": None if paid is None else round(paid - replayed, 3),
            "per_s": round(last_n / (last_t - first), 1) if first and last_t > first else None,
        }
    result["errors"] = dict(bench.errors)
    result["closes"] = dict(bench.closes)
    for conn in [*bench.viewers, *(d.conn for d in bench.devices if d.conn is not None)]:
        conn.close()
    await asyncio.sleep(0.5)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.plan) as f:
        plan = json.load(f)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    connect_only = plan["kind"] == "relay" or plan.get("connect_only")
    runner = run_connect_only if connect_only else run_portal
    try:
        import uvloop

        result = uvloop.run(runner(plan))
    except ImportError:
        result = asyncio.run(runner(plan))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
