"""Background work yields the CPU to the sockets.

A storm of power reports (bench/outages: 2,500 homes losing their mains within 10 s on a 2-core
machine) makes the Celery worker drain them at about half a core. At the same priority, the ASGI
servers then got less CPU than their sockets needed: residents saw the cut after p99 2-4 s and
telemetry acks slowed twentyfold. The drains can wait a few hundred milliseconds; a resident's
socket should not. So the Celery worker lowers its own priority when it starts (`WORKER_NICE`,
default 10; 0 leaves it as it is), and the processes it forks inherit it.

Two levers, since Linux's autogroup scheduling (on by default in Debian's kernels) first shares
the CPU between sessions and only then between the processes of a session by their nice value:
`make run` (honcho) and the benchmarks start every process in a session of its own, so the
worker's own nice value alone would change nothing against the servers. The worker also sets the
nice value of its session's group, but only when it leads that session: in a session it did not
start (a terminal's, say) the group holds other processes too. In containers, CPU shares between
containers play the same part (`cpu_shares` in compose.yaml).
"""

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def yield_cpu(nice: int, *, autogroup: Path = AUTOGROUP) -> list[str]:
    """Lower this process's CPU priority by `nice` (and its session group's, when it leads the
    session and the kernel groups by session). Returns what was lowered, for the log."""
    if nice <= 0:
        return []
    done = [f"process nice {os.nice(nice)}"]
    if os.getsid(0) == os.getpid() and autogroup.exists():
        try:
            autogroup.write_text(str(min(nice, 19)))
        except OSError as exc:  # no such right here (a locked-down /proc): the process's own stays
            logger.warning("cannot lower the session's CPU priority (%s)", exc)
        else:
            done.append(f"session group nice {min(nice, 19)}")
    return done
