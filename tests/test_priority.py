"""The Celery worker yields the CPU to the servers (energy_portal/priority.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery.signals import worker_init

from energy_portal import celery as celery_app
from energy_portal.priority import AUTOGROUP, yield_cpu

ROOT = Path(__file__).resolve().parent.parent


def _in_own_session(code: str) -> str:
    """Run `code` in a Python process leading a session of its own (as honcho and the
    benchmarks start the worker); its output."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=30,
        check=True,
    )
    return done.stdout


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="the kernel does not group by session")
def test_a_session_leader_lowers_its_process_and_its_session_group():
    out = _in_own_session(
        "import os; from energy_portal.priority import yield_cpu; "
        "print(yield_cpu(7)); print(os.getpriority(os.PRIO_PROCESS, 0)); "
        "print(open('/proc/self/autogroup').read())"
    )
    done, process_nice, autogroup = out.splitlines()[:3]
    if "session group" not in done:
        pytest.skip(f"this kernel refused the session group's nice value here: {done}")
    assert "session group nice 7" in done
    assert int(process_nice) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    assert autogroup.endswith("nice 7")


def test_outside_its_own_session_only_the_process_is_lowered(tmp_path):
    # This test process does not lead its session: the session's group (standing in here as a
    # file) holds other processes and is left alone.
    autogroup = tmp_path / "autogroup"
    autogroup.write_text("/autogroup-1 nice 0\n")
    out = subprocess.run(
        [sys.executable, "-c",
         "import os, pathlib; from energy_portal.priority import yield_cpu; "
         f"print(yield_cpu(3, autogroup=pathlib.Path({str(autogroup)!r}))); "
         "print(os.getpriority(os.PRIO_PROCESS, 0))"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert out[0] == f"['process nice {min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)}']"
    assert autogroup.read_text() == "/autogroup-1 nice 0\n"


def test_zero_leaves_the_priority_as_it_is():
    before = os.getpriority(os.PRIO_PROCESS, 0)
    assert yield_cpu(0) == []
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_the_worker_yields_by_the_setting_when_it_starts(monkeypatch, settings):
    asked = []
    monkeypatch.setattr("energy_portal.priority.yield_cpu", lambda nice: asked.append(nice) or [])
    settings.WORKER_NICE = 12

    # Called as Celery's worker calls it (the signal also reaches Celery's own Django fix-up,
    # which would close this process's connections: not sent here).
    handler = celery_app._yield_cpu_to_the_servers
    listening = [receiver() for _, receiver in worker_init.receivers]  # weak references
    handler()

    assert handler in listening
    assert asked == [12]


def test_make_run_starts_each_process_as_its_sessions_leader():
    # honcho runs each line through `sh -c` in a new session: without `exec` the shell would lead
    # the session and the worker could not lower its session group (seen: "process nice 10" only).
    from energy_portal.run import shell_line

    line = shell_line([sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid())"])
    done = subprocess.run(
        ["/bin/sh", "-c", line], capture_output=True, text=True, start_new_session=True, timeout=30
    )
    assert done.stdout.strip() == "True"
