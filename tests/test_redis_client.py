"""The process-wide Redis clients."""

import threading
import time

import redis

from energy_portal.redis_client import sync_client, sync_client_reset


def test_threads_racing_for_the_sync_client_make_one_and_share_it(monkeypatch):
    # given no client yet, a slow client constructor (so racing threads overlap inside it), and
    # many threads asking at the same instant
    made = []
    from_url = redis.Redis.from_url

    def slow_from_url(*args, **kwargs):
        time.sleep(0.02)
        client = from_url(*args, **kwargs)
        made.append(client)
        return client

    monkeypatch.setattr(redis.Redis, "from_url", slow_from_url)
    sync_client_reset()
    start = threading.Barrier(16)
    got = []

    def ask():
        start.wait()
        got.append(sync_client())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then one client was made and everyone has it: none is collected (closing its
    # connections) under a thread still using it
    assert len(made) == 1
    assert all(client is made[0] for client in got)
    sync_client_reset()
