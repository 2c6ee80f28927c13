"""The embedded Valkey of `make run`: out of the terminal's reach, stopped cleanly by the portal."""

import os

import pytest
import redis

from django.core.exceptions import ImproperlyConfigured

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


def test_a_server_of_another_data_folder_on_the_port_is_refused_not_joined(tmp_path, monkeypatch):
    # given: a Valkey of another portal (or of a checkout since deleted) on the port
    port = free_port()
    monkeypatch.setenv("EMBEDDED_VALKEY_PORT", str(port))
    server = embedded.valkey_start(port, tmp_path / "other" / "valkey")
    try:
        # then: this portal says so instead of writing into it
        with pytest.raises(ImproperlyConfigured, match=f"Port {port} is taken by another server"):
            embedded.redis_url(tmp_path / "mine")
        # and the portal whose server it is joins it
        assert embedded.redis_url(tmp_path / "other") == f"redis://127.0.0.1:{port}/0"
    finally:
        embedded.valkey_stop(server)
