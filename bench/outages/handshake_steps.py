"""Where a device handshake's time goes: the steps of `DeviceConsumer.connect()` timed one by
one, in one process, one device at a time (no contention: what each step costs alone).

    python -m bench.outages.handshake_steps --count 500

The steps are the consumer's own calls, in its order: the token check (`devices.batched`
`socket_lookups`: one trip to the thread pool for the handshakes waiting), claiming the socket
registry entry (Redis), marking the device online and reading its open commands
(`sockets_connected`, one trip). Then, as a socket closing does, leaving: the registry entry,
and offline (`sockets_disconnected`). Wall time includes
the hop to the thread pool and back; CPU is this process's (every thread's). The server's own
share (HTTP upgrade, WebSocket protocol, routing, the consumer's set-up) is what the load
generator's handshake time has on top of these.

Then the same calls for `--burst` devices at once (as a reconnecting fleet's handshakes wait
together in one server process): the batched trips, per handshake.
"""

import argparse
import asyncio
import time
from collections import defaultdict


async def _time_steps(entries: list[dict], burst_size: int) -> dict:
    from channels.layers import get_channel_layer

    from django.utils import timezone

    from devices import socket_registry
    from devices.batched import socket_lookups, sockets_connected, sockets_disconnected

    layer = get_channel_layer()
    wall: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)

    async def step(name, awaitable):
        w0, c0 = time.perf_counter(), time.process_time()
        value = await awaitable
        wall[name].append(time.perf_counter() - w0)
        cpu[name].append(time.process_time() - c0)
        return value

    for warm in (True, False):
        for entry in entries[:20] if warm else entries:
            channel = await layer.new_channel()
            device, _sensors = await step("token check (db)", socket_lookups()(entry["token"]))
            await step("registry claim", socket_registry.claim(device.id, channel))
            await step("online + open commands (db)", sockets_connected()((device, timezone.now())))
            await step("leave: registry release", socket_registry.release(device.id, channel))
            await step(
                "leave: offline (db)", sockets_disconnected()((device, timezone.now(), False))
            )
        if warm:
            wall.clear()
            cpu.clear()
    per_ms = {
        name: {
            "wall_ms": round(sum(values) / len(values) * 1000, 3),
            "cpu_ms": round(sum(cpu[name]) / len(values) * 1000, 3),
        }
        for name, values in wall.items()
    }
    connect = [n for n in per_ms if not n.startswith("leave")]
    per_ms["connect() total"] = {
        "wall_ms": round(sum(per_ms[n]["wall_ms"] for n in connect), 3),
        "cpu_ms": round(sum(per_ms[n]["cpu_ms"] for n in connect), 3),
    }
    # The same database steps for `burst` handshakes at once: their calls wait together.
    burst: dict[str, dict] = {}
    for size in (burst_size,) if burst_size > 1 else ():
        group = entries[:size]
        w0, c0 = time.perf_counter(), time.process_time()
        found = await asyncio.gather(*(socket_lookups()(e["token"]) for e in group))
        now = timezone.now()
        await asyncio.gather(*(sockets_connected()((device, now)) for device, _ in found))
        w1, c1 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(sockets_disconnected()((d, now, False)) for d, _ in found))
        w2, c2 = time.perf_counter(), time.process_time()
        burst = {
            "handshakes": len(group),
            "token check + online, per handshake": {
                "wall_ms": round((w1 - w0) / len(group) * 1000, 3),
                "cpu_ms": round((c1 - c0) / len(group) * 1000, 3),
            },
            "leave: offline, per socket": {
                "wall_ms": round((w2 - w1) / len(group) * 1000, 3),
                "cpu_ms": round((c2 - c1) / len(group) * 1000, 3),
            },
        }
    return {"count": len(entries), "steps": per_ms, "burst": burst}


def time_steps(entries: list[dict], burst: int = 100) -> dict:
    """Time the handshake's steps for `entries` (Django set up with the benchmark's settings),
    then the database steps of `burst` handshakes at once."""
    return asyncio.run(_time_steps(entries, burst))


def main() -> None:
    from bench.outages import setup_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--burst", type=int, default=100, help="handshakes at once, then")
    args = parser.parse_args()
    result = time_steps(setup_data.ensure(max(args.count, args.burst)), args.burst)
    for name, figures in result["steps"].items():
        print(f"{name:<30} wall {figures['wall_ms']:>7} ms  cpu {figures['cpu_ms']:>7} ms")
    for name, figures in result["burst"].items():
        if isinstance(figures, dict):
            wall, cpu = figures["wall_ms"], figures["cpu_ms"]
            print(f"burst: {name:<36} wall {wall:>7} ms  cpu {cpu:>7} ms")


if __name__ == "__main__":
    main()
