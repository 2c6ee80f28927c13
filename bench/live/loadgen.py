"""Load generator: N simulated Pis and N dashboard viewers against one server, in one process.

    python -m bench.live.loadgen --plan plan.json --out result.json

Normally started by `bench.live.run`, which writes the plan (server address and kind, the residents
to use, the phases to run). One asyncio process (uvloop when installed) drives every socket through
a small WebSocket client of its own on `asyncio.Protocol`: the `websockets` client costs several
times more CPU per frame and would make the load generator, not the server, the bottleneck on a
2-core machine. Client frames are masked with an all-zero key (valid per RFC 6455, and free).

Each device sends `{"type":"telemetry","msg_id":"<seq>","ts":"<send time, RFC 3339, µs, Z>",
"values":{"power_w":<seq>.5}}` at its rate with a random phase. The value carries the sequence
number, so a viewer that receives the point (a `readings` message of its own site) finds the exact
send time: latency = receive time - send time (= the point's `ts`; same clock, same host). Acks are
matched by `msg_id`. Only points sent after the warm-up and before the end of a phase are counted;
after sending stops the phase waits (bounded) for what is still in flight.
"""

import argparse
import asyncio
import base64
import gc
import json
import os
import random
import resource
import sys
import time
from collections import Counter

import psutil

CLIENT_MASK = b"\x00\x00\x00\x00"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# -- a minimal WebSocket client ------------------------------------------------------------------


class Conn(asyncio.Protocol):
    """One client socket: HTTP/1.1 upgrade, then text frames in and out."""

    def __init__(self, request: bytes, on_text, on_close):
        self.request = request
        self.on_text = on_text
        self.on_close = on_close
        self.transport = None
        self.buf = bytearray()
        self.fragments: list[bytes] = []
        self.open = False
        self.closed = False
        self.close_code: int | None = None
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc):
        was_open = self.open
        self.open = False
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost in handshake: {exc}"))
        elif was_open:
            self.on_close(self)

    def data_received(self, data):
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            try:
                status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                status = 0
            if status != 101:
                if not self.ready.done():
                    self.ready.set_exception(ConnectionRefusedError(f"HTTP {status}"))
                self.transport.close()
                return
            self.open = True
            self.ready.set_result(None)
        now = time.time()
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, header = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if b1 & 0x80:  # servers never mask; tolerate it anyway
                header += 4
            if size - pos < header + length:
                break
            payload = bytes(buf[pos + header : pos + header + length])
            if b1 & 0x80:
                key = buf[pos + header - 4 : pos + header]
                payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
            pos += header + length
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                if not b0 & 0x80:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments = []
                self.on_text(self, payload, now)
            elif opcode == 9:  # ping -> pong
                self._frame(0x8A, payload)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.open:
                    self._frame(0x88, payload[:2])
                    self.open = False
                    self.on_close(self)  # closed by the server (a close we started is not open)
                self.transport.close()
                break
        del buf[:pos]

    def _frame(self, first: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        length = len(payload)
        if length < 126:
            header = bytes((first, 0x80 | length))
        elif length < 65536:
            header = bytes((first, 0xFE)) + length.to_bytes(2, "big")
        else:
            header = bytes((first, 0xFF)) + length.to_bytes(8, "big")
        self.transport.write(header + CLIENT_MASK + payload)

    def send_text(self, text: str) -> bool:
        if not self.open:
            return False
        self._frame(0x81, text.encode())
        return True

    def close(self) -> None:
        if self.open:
            self._frame(0x88, (1000).to_bytes(2, "big"))
            self.open = False
        if self.transport is not None:
            self.transport.close()


def _request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- measurement ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def connect_summary(
    what: str, count: int, durations: list[float], failures: Counter, elapsed: float
) -> dict:
    """What a wave of `count` socket connects came to (logged in one line): how many opened,
    how fast, the handshakes' percentiles, the failures by kind."""
    result = {
        "what": what,
        "count": count,
        "ok": len(durations),
        "failed": dict(failures),
        "seconds": round(elapsed, 2),
        "per_s": round(len(durations) / elapsed, 1) if elapsed else None,
        "handshake_ms": summary_ms(durations),
    }
    log(
        f"{what}: {len(durations)}/{count} open in {elapsed:.1f}s ({result['per_s']}/s, "
        f"handshake p99 {result['handshake_ms']['p99']} ms)"
        + (f", failed {dict(failures)}" if failures else "")
    )
    return result


def summary_ms(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, max(0, int(q / 100 * n + 0.5) - 1))] * 1000, 2)

    return {
        "count": n,
        "p50": at(50),
        "p95": at(95),
        "p99": at(99),
        "max": round(ordered[-1] * 1000, 2),
        "mean": round(sum(ordered) / n * 1000, 2),
    }


class Window:
    """Which sends count: those in [start, end)."""

    def __init__(self):
        self.start = self.end = 0.0
        self.reset()

    def reset(self):
        self.sent = self.delivered = self.acked = self.unmatched = 0
        self.send_failed = 0
        self.latencies: list[float] = []
        self.ack_rtts: list[float] = []
        self.errors: Counter = Counter()
        self.other = Counter()

    def counts(self, t: float) -> bool:
        return self.start <= t < self.end


class Processes:
    """CPU and memory of the server under test, Redis and this process."""

    def __init__(self, server_pid: int, redis_pid: int | None):
        self.server = psutil.Process(server_pid)
        self.redis = psutil.Process(redis_pid) if redis_pid else None
        self.me = psutil.Process()

    @staticmethod
    def _cpu(proc) -> float:
        """CPU time of `proc` and of its live child processes (Uvicorn's workers)."""
        if proc is None:
            return 0.0
        total = 0.0
        try:
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for member in family:
            try:
                times = member.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def snapshot(self) -> dict:
        machine = psutil.cpu_times()
        return {
            "t": time.monotonic(),
            "server": self._cpu(self.server),
            "redis": self._cpu(self.redis),
            "loadgen": self._cpu(self.me),
            "machine": machine.user
            + machine.system
            + machine.nice
            + getattr(machine, "irq", 0)
            + getattr(machine, "softirq", 0),
        }

    def since(self, before: dict) -> dict:
        """CPU used since `before`, in cores; `others_cpu` is everything else on the machine
        (other people's work, the kernel's share not charged to our processes)."""
        now = self.snapshot()
        wall = max(now["t"] - before["t"], 1e-6)
        used = {
            f"{name}_cpu": round((now[name] - before[name]) / wall, 3)
            for name in ("server", "redis", "loadgen")
        }
        machine = (now["machine"] - before["machine"]) / wall
        used["others_cpu"] = round(max(0.0, machine - sum(used.values())), 3)
        return used

    def server_rss_mb(self) -> float:
        return round(self.server.memory_info().rss / 2**20, 1)

    def alive(self) -> bool:
        return self.server.is_running() and self.server.status() != psutil.STATUS_ZOMBIE


# -- the simulated fleet --------------------------------------------------------------------------


class Device:
    __slots__ = ("conn", "entry", "handle", "interval", "next_at", "pending", "sent", "site")

    def __init__(self, entry: dict):
        self.entry = entry
        self.site = entry["site"]
        self.conn: Conn | None = None
        self.handle = None
        self.interval = 1.0
        self.next_at = 0.0
        self.sent = 0
        self.pending: dict[int, float] = {}  # seq -> send time, until delivered


class Viewer:
    __slots__ = ("conn", "entry")

    def __init__(self, entry: dict):
        self.entry = entry
        self.conn: Conn | None = None


class Fleet:
    def __init__(self, plan: dict):
        self.plan = plan
        self.host, self.port = plan["host"], plan["port"]
        self.kind = plan["kind"]  # portal | relay
        self.entries = plan["entries"]
        self.devices: list[Device] = []
        self.by_site: dict[int, Device] = {}
        self.viewers: list[Viewer] = []
        self.acks: dict[tuple[int, str], float] = {}
        self.window = Window()
        self.closes: Counter = Counter()
        self.loop = asyncio.get_running_loop()
        self.procs = Processes(plan["server_pid"], plan.get("redis_pid"))
        self.lags: list[float] = []
        self._ts_sec = -1
        self._ts_prefix = ""
        self.label = plan.get("label", self.kind)

    # ---- frames in

    def on_device_text(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            self.window.errors["bad_json_from_server"] += 1
            return
        kind = frame.get("type")
        if kind == "ack":
            sent = self.acks.pop((id(conn), frame.get("msg_id")), None)
            if sent is not None and self.window.counts(sent):
                self.window.acked += 1
                self.window.ack_rtts.append(now - sent)
        elif kind == "error":
            self.window.errors[frame.get("code", "?")] += 1
        else:
            self.window.other[f"device:{kind}"] += 1

    def on_viewer_text(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            self.window.errors["bad_json_from_server"] += 1
            return
        if isinstance(frame, list):  # the portal's messages that waited together
            self.window.other["viewer:batched_frames"] += 1
            for message in frame:
                self._on_viewer_message(message, now)
        else:
            self._on_viewer_message(frame, now)

    def _on_viewer_message(self, frame: dict, now: float) -> None:
        if frame.get("type") != "readings":
            self.window.other[f"viewer:{frame.get('type')}"] += 1
            return
        device = self.by_site.get(frame.get("site"))
        window = self.window
        for point in frame.get("points", ()):
            value = point.get("values", {}).get("power_w")
            sent = device.pending.pop(int(value), None) if device and value is not None else None
            if sent is None:
                window.unmatched += 1
            elif window.start <= sent < window.end:
                window.delivered += 1
                window.latencies.append(now - sent)

    def on_close(self, conn: Conn) -> None:
        self.closes[str(conn.close_code or "dropped")] += 1

    # ---- frames out

    def _ts(self, t: float) -> str:
        sec = int(t)
        if sec != self._ts_sec:
            self._ts_sec = sec
            self._ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._ts_prefix}.{int((t - sec) * 1e6):06d}Z"

    def _send_telemetry(self, device: Device) -> None:
        now_mono = self.loop.time()
        device.next_at += device.interval
        if device.next_at < now_mono - 1.0:  # fell more than 1 s behind: do not burst to catch up
            device.next_at = now_mono + device.interval
        device.handle = self.loop.call_at(device.next_at, self._send_telemetry, device)
        device.sent += 1
        seq = device.sent
        t = time.time()
        text = (
            f'{{"type":"telemetry","msg_id":"{seq}","ts":"{self._ts(t)}",'
            f'"values":{{"power_w":{seq}.5}}}}'
        )
        if device.conn is None or not device.conn.send_text(text):
            self.window.send_failed += 1
            return
        device.pending[seq] = t
        self.acks[(id(device.conn), str(seq))] = t
        if self.window.start <= t < self.window.end:
            self.window.sent += 1

    def _send_heartbeat(self, device: Device) -> None:
        device.next_at += device.interval
        device.handle = self.loop.call_at(device.next_at, self._send_heartbeat, device)
        if device.conn is not None:
            device.conn.send_text('{"type":"heartbeat"}')

    def schedule(self, devices: list[Device], rate_hz: float, heartbeat: bool = False) -> None:
        now = self.loop.time()
        for device in devices:
            if device.handle is not None:
                device.handle.cancel()
            device.interval = 1.0 / rate_hz
            device.next_at = now + random.uniform(0, device.interval)
            callback = self._send_heartbeat if heartbeat else self._send_telemetry
            device.handle = self.loop.call_at(device.next_at, callback, device)

    def unschedule(self, devices: list[Device]) -> None:
        for device in devices:
            if device.handle is not None:
                device.handle.cancel()
                device.handle = None

    # ---- connections

    async def _open(self, path: str, headers: dict, on_text) -> Conn:
        request = _request(self.host, self.port, path, headers)
        conn = Conn(request, on_text, self.on_close)
        await self.loop.create_connection(lambda: conn, self.host, self.port)
        await conn.ready
        return conn

    async def _open_many(self, what: str, jobs: list, timeout: float) -> dict:
        concurrency = self.plan.get("connect_concurrency", 50)
        semaphore = asyncio.Semaphore(concurrency)
        durations: list[float] = []
        failures: Counter = Counter()
        started = time.monotonic()
        deadline = started + self.plan.get("connect_budget_s", 120)

        async def one(job):
            path, headers, on_text, done = job
            async with semaphore:
                if time.monotonic() > deadline:
                    failures["budget exceeded"] += 1
                    return
                t0 = time.monotonic()
                try:
                    conn = await asyncio.wait_for(self._open(path, headers, on_text), timeout)
                except (TimeoutError, OSError, ConnectionError) as exc:
                    failures[type(exc).__name__ + (f" {exc}" if "HTTP" in str(exc) else "")] += 1
                    return
                durations.append(time.monotonic() - t0)
                done(conn)

        progress = asyncio.create_task(self._connect_progress(what, durations, failures, len(jobs)))
        try:
            await asyncio.gather(*(one(job) for job in jobs))
        finally:
            progress.cancel()
        return connect_summary(
            f"[{self.label}] {what}", len(jobs), durations, failures, time.monotonic() - started
        )

    async def _connect_progress(self, what, durations, failures, total):
        while True:
            await asyncio.sleep(5)
            failed = sum(failures.values())
            log(f"[{self.label}]   {what}: {len(durations)}/{total} open, {failed} failed")

    def _viewer_job(self, viewer: "Viewer") -> tuple:
        entry = viewer.entry
        if self.kind == "relay":
            path, headers = f"/ws/live/?site={entry['site']}", {}
        else:
            path = "/ws/live/"
            headers = {
                "Cookie": f"sessionid={entry['session']}",
                "Origin": f"http://127.0.0.1:{self.port}",
            }

        def done(conn, viewer=viewer):
            viewer.conn = conn

        return (path, headers, self.on_viewer_text, done)

    def _device_job(self, device: Device) -> tuple:
        def done(conn, device=device):
            device.conn = conn

        headers = {"Authorization": f"Bearer {device.entry['token']}"}
        return ("/ws/devices/", headers, self.on_device_text, done)

    async def open_viewers(self, entries: list[dict]) -> dict:
        viewers = [Viewer(entry) for entry in entries]
        self.viewers.extend(viewers)
        jobs = [self._viewer_job(v) for v in viewers]
        return await self._open_many(f"{len(entries)} viewers", jobs, timeout=30)

    async def open_devices(self, entries: list[dict]) -> dict:
        jobs = []
        for entry in entries:
            device = Device(entry)
            self.devices.append(device)
            self.by_site[device.site] = device
            jobs.append(self._device_job(device))
        return await self._open_many(f"{len(entries)} devices", jobs, timeout=30)

    async def reconnect(self) -> dict | None:
        """Reopen sockets the server closed (as a Pi or a browser would), viewers first."""
        viewers = [v for v in self.viewers if v.conn is None or not v.conn.open]
        devices = [d for d in self.devices if d.conn is None or not d.conn.open]
        if not viewers and not devices:
            return None
        log(
            f"[{self.label}] reopening {len(viewers)} viewers, {len(devices)} devices "
            "closed by the server"
        )
        result: dict = {"viewers": len(viewers), "devices": len(devices)}
        if viewers:
            jobs = [self._viewer_job(v) for v in viewers]
            result["viewers_connect"] = await self._open_many(
                f"{len(viewers)} viewers (again)", jobs, timeout=30
            )
        if devices:
            jobs = [self._device_job(d) for d in devices]
            result["devices_connect"] = await self._open_many(
                f"{len(devices)} devices (again)", jobs, timeout=30
            )
        return result

    async def close_all(self) -> None:
        self.unschedule(self.devices)
        for device in self.devices:
            if device.conn is not None:
                device.conn.close()
        for viewer in self.viewers:
            if viewer.conn is not None:
                viewer.conn.close()
        self.devices, self.viewers, self.by_site, self.acks = [], [], {}, {}
        await asyncio.sleep(0.5)

    def connected_devices(self) -> list[Device]:
        return [d for d in self.devices if d.conn is not None and d.conn.open]

    def open_counts(self) -> dict:
        return {
            "devices_open": len(self.connected_devices()),
            "viewers_open": sum(1 for v in self.viewers if v.conn is not None and v.conn.open),
        }

    # ---- helpers

    async def lag_monitor(self) -> None:
        while True:
            t0 = self.loop.time()
            await asyncio.sleep(0.01)
            self.lags.append(self.loop.time() - t0 - 0.01)

    async def settle(self, max_s: float = 20.0, below: float = 0.15) -> float:
        """Wait until the server's CPU stays under `below` of a core for ~1 s (connect and
        disconnect work finished), at most max_s seconds."""
        started = time.monotonic()
        calm = 0
        while time.monotonic() - started < max_s:
            before = self.procs.snapshot()
            await asyncio.sleep(0.5)
            calm = calm + 1 if self.procs.since(before)["server_cpu"] < below else 0
            if calm >= 2:
                break
        return round(time.monotonic() - started, 1)

    def check_server(self) -> None:
        if not self.procs.alive():
            raise RuntimeError("the server under test died")

    async def measure(
        self,
        devices: list[Device],
        rate_hz: float,
        duration: float,
        warmup: float,
        drain_s: float,
        tag: str,
    ) -> dict:
        """Send at rate_hz per device for `duration`; count sends in [warmup, duration)."""
        self.check_server()
        for device in devices:
            device.pending.clear()
        self.acks.clear()
        self.window.reset()
        self.lags.clear()
        self.closes.clear()
        open_at_start = self.open_counts()
        t0 = time.time()
        self.window.start, self.window.end = t0 + warmup, t0 + duration
        self.schedule(devices, rate_hz)
        cpu_before = None
        next_report = time.time() + 5
        while time.time() < t0 + duration:
            await asyncio.sleep(0.1)
            if cpu_before is None and time.time() >= self.window.start:
                cpu_before = self.procs.snapshot()
            if time.time() >= next_report and duration >= 8:
                next_report += 5
                w = self.window
                log(
                    f"[{self.label}]   {tag} t={time.time() - t0:.0f}s sent={w.sent} "
                    f"delivered={w.delivered} acked={w.acked} errors={sum(w.errors.values())}"
                )
        cpu = self.procs.since(cpu_before) if cpu_before else {}
        self.unschedule(devices)
        lags = list(self.lags)
        # Drain: wait for the counted points still in flight, while they keep arriving.
        drain_start = time.monotonic()
        last = (-1, -1)
        while time.monotonic() - drain_start < drain_s:
            w = self.window
            if w.delivered >= w.sent and w.acked >= w.sent:
                break
            await asyncio.sleep(0.25)
            if (w.delivered, w.acked) == last and time.monotonic() - drain_start > 2:
                break  # nothing more is coming
            last = (w.delivered, w.acked)
        w = self.window
        measured = duration - warmup
        result = {
            "devices": len(devices),
            "rate_hz_per_device": rate_hz,
            "target_per_s": round(len(devices) * rate_hz, 1),
            "seconds": measured,
            "sent": w.sent,
            "sent_per_s": round(w.sent / measured, 1),
            "delivered": w.delivered,
            "delivered_per_s": round(w.delivered / measured, 1),
            "acked": w.acked,
            "delivered_ratio": round(w.delivered / w.sent, 4) if w.sent else None,
            "acked_ratio": round(w.acked / w.sent, 4) if w.sent else None,
            "latency_ms": summary_ms(w.latencies),
            "ack_ms": summary_ms(w.ack_rtts),
            "errors": dict(w.errors),
            "send_failed": w.send_failed,
            "unmatched": w.unmatched,
            "other_frames": dict(w.other),
            "closed_by_server": dict(self.closes),
            "open_at_start": open_at_start,
            "open_at_end": self.open_counts(),
            "drain_s": round(time.monotonic() - drain_start, 2),
            "loadgen_lag_ms_p99": round((pct(lags, 99) or 0) * 1000, 1),
            **cpu,
        }
        lat = result["latency_ms"]
        log(
            f"[{self.label}] {tag}: sent {w.sent} ({result['sent_per_s']}/s) delivered "
            f"{result['delivered_ratio']} p50/p95/p99 {lat['p50']}/{lat['p95']}/{lat['p99']} ms; "
            f"cpu server {cpu.get('server_cpu')} redis {cpu.get('redis_cpu')} "
            f"loadgen {cpu.get('loadgen_cpu')} others {cpu.get('others_cpu')}"
            + (f"; errors {dict(w.errors)}" if w.errors else "")
            + (f"; closed by server {dict(self.closes)}" if self.closes else "")
        )
        for device in devices:
            device.pending.clear()
        self.acks.clear()
        return result


# -- phases ---------------------------------------------------------------------------------------


def passes(step: dict, rules: dict) -> tuple[bool, str]:
    if not step["sent"]:
        return False, "nothing sent"
    if step["sent_per_s"] < rules["min_offered"] * step["target_per_s"]:
        return False, f"offered only {step['sent_per_s']}/s (load generator or sockets saturated)"
    if (step["delivered_ratio"] or 0) < rules["min_delivered"]:
        return False, f"delivered {step['delivered_ratio']:.3f} < {rules['min_delivered']}"
    p99 = step["latency_ms"]["p99"]
    if p99 is None or p99 > rules["max_p99_ms"]:
        return False, f"p99 {p99} ms > {rules['max_p99_ms']} ms"
    return True, "ok"


async def sustained(fleet: Fleet, spec: dict) -> dict:
    n = spec["n"]
    devices = fleet.devices[:n]
    rules = {
        "min_delivered": spec.get("min_delivered", 0.99),
        "max_p99_ms": spec.get("max_p99_ms", 250),
        "min_offered": spec.get("min_offered", 0.95),
    }
    steps, best, worst_fail = [], None, None
    rates = list(spec["rates"])

    async def run_step(total: float) -> dict:
        await fleet.settle(max_s=10)
        reopened = await fleet.reconnect()
        step = await fleet.measure(
            devices,
            total / len(devices),
            spec["step_s"],
            spec.get("warmup_s", 1.0),
            drain_s=spec.get("drain_s", 5),
            tag=f"sustained {total:.0f} msg/s",
        )
        ok, why = passes(step, rules)
        step.update(target_total=total, passed=ok, verdict=why, reopened_before=reopened)
        steps.append(step)
        return step

    for total in rates:
        step = await run_step(total)
        if step["passed"]:
            best = step
        else:
            worst_fail = total
            break
    # Narrow the gap between the last pass and the first fail.
    low = best["target_total"] if best else 0
    for _ in range(spec.get("refine", 2)):
        if worst_fail is None or worst_fail - low <= max(250, 0.1 * worst_fail):
            break
        mid = round((low + worst_fail) / 2, -2)
        step = await run_step(mid)
        if step["passed"]:
            best, low = step, mid
        else:
            worst_fail = mid
    return {
        "devices": len(devices),
        "viewers": len(devices),
        "rules": rules,
        "steps": steps,
        "best_target_per_s": best["target_total"] if best else 0,
        "best_delivered_per_s": best["delivered_per_s"] if best else 0,
        "best_p99_ms": best["latency_ms"]["p99"] if best else None,
        "first_failing_target_per_s": worst_fail,
    }


async def idle(fleet: Fleet, spec: dict) -> dict:
    await fleet.close_all()
    settle = await fleet.settle(max_s=20, below=0.05)
    window = spec.get("window_s", 10)
    points = []

    async def point(k: int) -> dict:
        # Connecting costs the server ~1 core (database look-ups); idle costs a small fraction.
        await asyncio.sleep(3)
        await fleet.settle(max_s=20, below=0.3)
        fleet.window.reset()
        before = fleet.procs.snapshot()
        await asyncio.sleep(window)
        cpu = fleet.procs.since(before)
        connected = len(fleet.connected_devices())
        entry = {
            "k": k,
            "connected": connected,
            "rss_mb": fleet.procs.server_rss_mb(),
            **cpu,
            "errors": dict(fleet.window.errors),
            "closes": dict(fleet.closes),
        }
        frac = cpu["server_cpu"]
        entry["sockets_per_core"] = round(connected / frac) if frac > 0 and connected else None
        log(
            f"[{fleet.label}] idle K={k}: {connected} open, server cpu {frac:.3f} core, "
            f"rss {entry['rss_mb']} MB -> {entry['sockets_per_core']} idle sockets per busy core"
        )
        return entry

    points.append(await point(0))
    opened = 0
    for k in spec["k"]:
        entries = fleet.entries[opened:k]
        connect = await fleet.open_devices(entries)
        fleet.schedule(fleet.devices[opened:k], 1.0 / spec.get("heartbeat_s", 15), heartbeat=True)
        opened = k
        entry = await point(k)
        entry["connect"] = connect
        points.append(entry)
    base = points[0]
    for entry in points[1:]:
        extra = entry["server_cpu"] - base["server_cpu"]
        entry["sockets_per_core_marginal"] = (
            round(entry["connected"] / extra) if extra > 0 and entry["connected"] else None
        )
    per_socket_kb = None
    if len(points) >= 3 and points[-1]["connected"] > points[1]["connected"]:
        per_socket_kb = round(
            (points[-1]["rss_mb"] - points[1]["rss_mb"])
            * 1024
            / (points[-1]["connected"] - points[1]["connected"]),
            1,
        )
    await fleet.close_all()
    # Thousands of disconnects keep the server busy (device_set_online in the DB) for a while.
    settled_after = await fleet.settle(max_s=60, below=0.1)
    return {
        "settle_after_close_s": settled_after,
        "heartbeat_s": spec.get("heartbeat_s", 15),
        "window_s": window,
        "settle_s": settle,
        "points": points,
        "memory_per_socket_kb": per_socket_kb,
    }


async def run(plan: dict) -> dict:
    fleet = Fleet(plan)
    lag = asyncio.create_task(fleet.lag_monitor())
    result: dict = {"label": fleet.label, "connect": [], "sweep": [], "errors": []}
    result["server_rss_mb_start"] = fleet.procs.server_rss_mb()
    sweep = plan.get("sweep", {})
    try:
        if plan.get("idle"):  # first, on a fresh server process: memory per socket is then clean
            result["idle"] = await idle(fleet, plan["idle"])
        opened = 0
        for n in sweep.get("n", []):
            if n > opened:
                result["connect"].append(await fleet.open_viewers(fleet.entries[opened:n]))
                result["connect"].append(await fleet.open_devices(fleet.entries[opened:n]))
                opened = n
                gc.collect()
                gc.freeze()
            await fleet.settle()
            reopened = await fleet.reconnect()
            if reopened:
                await fleet.settle()
            devices = fleet.devices[:n]
            step = await fleet.measure(
                devices,
                sweep.get("rate_hz", 1.0),
                sweep["duration_s"],
                sweep["warmup_s"],
                drain_s=sweep.get("drain_s", 5),
                tag=f"N={n}",
            )
            step.update(
                n=n,
                viewers=len(fleet.viewers),
                server_rss_mb=fleet.procs.server_rss_mb(),
                reopened_before=reopened,
            )
            result["sweep"].append(step)
            if plan.get("sustained") and n == plan["sustained"]["n"]:
                result["sustained"] = await sustained(fleet, plan["sustained"])
        if plan.get("sustained") and "sustained" not in result:
            n = plan["sustained"]["n"]
            await fleet.close_all()
            result["connect"].append(await fleet.open_viewers(fleet.entries[:n]))
            result["connect"].append(await fleet.open_devices(fleet.entries[:n]))
            result["sustained"] = await sustained(fleet, plan["sustained"])
        if plan.get("hold"):  # constant load for a profiler; no figures kept
            spec = plan["hold"]
            if not fleet.devices:
                result["connect"].append(await fleet.open_viewers(fleet.entries[: spec["n"]]))
                result["connect"].append(await fleet.open_devices(fleet.entries[: spec["n"]]))
            devices = fleet.connected_devices()[: spec["n"]]
            if spec.get("ready_file"):
                with open(spec["ready_file"], "w") as f:
                    f.write("load on\n")
            result["hold"] = await fleet.measure(
                devices,
                spec["rate_per_s"] / len(devices),
                spec["seconds"],
                1.0,
                drain_s=5,
                tag=f"hold {spec['rate_per_s']} msg/s",
            )
    except Exception as exc:  # report what was measured so far
        log(f"[{fleet.label}] aborted: {exc!r}")
        result["errors"].append(repr(exc))
    finally:
        lag.cancel()
        await fleet.close_all()
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
    try:
        import uvloop

        result = uvloop.run(run(plan))
    except ImportError:
        result = asyncio.run(run(plan))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
