"""The embedded Valkey of `make run`: out of the terminal's reach, stopped cleanly by the portal."""

import os

import redis

from energy_portal import embedded
from tests.e2e.servers import free_port


def test_embedded_valkey_runs_in_a_session_of_its_own_and_stops_with_its_data_saved(tmp_path):
    # given: Valkey started as `make run` starts it
    port = free_port()
    server = embedded.valkey_start(port, tmp_path)
    try:
        client = redis.Redis(port=port)
        client.set("kept", "yes")
        valkey_pid = client.info("server")["process_id"]
        client.close()

        # then: a Ctrl-C in this process's terminal (its foreground process group) cannot reach it
        assert os.getsid(valkey_pid) != os.getsid(0)
        assert os.getpgid(valkey_pid) != os.getpgid(0)
    finally:
        # when: the portal stops it, after its own processes
        embedded.valkey_stop(server)

    # then: it shut down on its own terms (not killed), its data on disk
    assert server.returncode == 0
    log = (tmp_path / "valkey.log").read_text()
    assert "ready to exit" in log
    restarted = embedded.valkey_start(port, tmp_path)
    try:
        assert redis.Redis(port=port).get("kept") == b"yes"
    finally:
        embedded.valkey_stop(restarted)
