"""The process-wide Redis clients."""

import threading

from energy_portal.redis_client import sync_client, sync_client_reset


def test_threads_racing_for_the_sync_client_all_get_the_same_one():
    # given no client yet, and many threads asking at the same instant
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
    # then one client was made, so none is collected (closing its connections) under a user
    assert len({id(client) for client in got}) == 1
    assert got[0] is sync_client()
