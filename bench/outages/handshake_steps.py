"""Where a device handshake's time goes: the steps of `DeviceConsumer.connect()` timed one by
one, in one process, one device at a time (no contention: what each step costs alone).

    python -m bench.outages.handshake_steps --count 500

The steps are the consumer's own calls, in its order: the token check (`device_for_socket`,
through the thread pool as the consumer calls it: `db()`), joining the device's group (channel
layer), claiming the socket registry entry (Redis), marking the device online and reading its
open commands (`device_connected`, one trip to the thread pool). Then, as a socket closing
does, leaving: the group, the registry entry, and offline. Wall time includes the hop to the
thread pool and back; CPU is this process's (every thread's). The server's own share (HTTP
upgrade, WebSocket protocol, routing, the consumer's set-up) is what the load generator's
handshake time has on top of these.
"""

import argparse
import asyncio
import time
from collections import defaultdict


async def _time_steps(entries: list[dict]) -> dict:
    from channels.layers import get_channel_layer

    from devices import selectors, services, socket_registry
    from devices.consumers import db
    from devices.groups import device_group

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
            device, _sensors = await step(
                "token check (db)", db(selectors.device_for_socket)(token=entry["token"])
            )
            await step(
                "group_add + registry claim",
                asyncio.gather(
                    layer.group_add(device_group(device.id), channel),
                    socket_registry.claim(device.id, channel),
                ),
            )
            await step("online + open commands (db)", db(services.device_connected)(device=device))
            await step(
                "leave: group_discard", layer.group_discard(device_group(device.id), channel)
            )
            await step("leave: registry release", socket_registry.release(device.id, channel))
            await step(
                "leave: offline (db)",
                db(services.device_set_online)(device_id=device.id, online=False),
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
    return {"count": len(entries), "steps": per_ms}


def time_steps(entries: list[dict]) -> dict:
    """Time the handshake's steps for `entries` (Django set up with the benchmark's settings)."""
    return asyncio.run(_time_steps(entries))


def main() -> None:
    from bench.outages import setup_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    result = time_steps(setup_data.ensure(args.count))
    for name, figures in result["steps"].items():
        print(f"{name:<30} wall {figures['wall_ms']:>7} ms  cpu {figures['cpu_ms']:>7} ms")


if __name__ == "__main__":
    main()
