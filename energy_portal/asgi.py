"""ASGI entry point: HTTP through Django, WebSockets through Channels routing."""

import gc
import os
import sys

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "energy_portal.settings")
# ASGI runs sync code on a new thread per request: connections come from a pool in a server
# process (see settings/database.py), while single-threaded processes keep persistent ones. Only
# when this module starts Django: a process that imported settings first (manage.py runserver,
# tests) keeps its own choice, and passes nothing on to the processes it starts.
_server_process = not settings.configured
if _server_process:
    os.environ.setdefault("DATABASE_POOL_SIZE", "10")
# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from devices.routing import websocket_urlpatterns  # noqa: E402
from energy_portal import gc_settle  # noqa: E402
from energy_portal.body_limit import BodyLimitMiddleware  # noqa: E402
from energy_portal.metrics import process_exited, tally_flush  # noqa: E402


async def lifespan(scope, receive, send):
    """The server's start and stop: at the stop, the sockets' tallied counts are added and this
    process's live metrics leave the count."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            tally_flush()  # the sockets' last counts, before the process's files are left
            process_exited()
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        # Bodies are bounded before Django reads them, on every route (see body_limit.py).
        "http": BodyLimitMiddleware(django_asgi_app),
        "websocket": URLRouter(websocket_urlpatterns),
        "lifespan": lifespan,
    }
)

if _server_process:
    # The cyclic collector, tuned for a long-running server holding thousands of sockets. The
    # start-up heap (Django, the apps, their libraries: about 130,000 objects that live as long as
    # the process) is collected once and then frozen out of the collector's sight, and young
    # collections are rarer, so the short-lived objects of messages in flight die before they
    # are promoted. Without this, full collections walked ~280,000 objects per 1,000 sockets and
    # held the event loop 100-260 ms each: 6 while 1,000 devices and 1,000 viewers connected and
    # 2 in 90 s at 4,000 msg/s (bench/live `+probe`, run 20261125-020056). With it, none ran in
    # that whole run. Each socket keeps about a dozen young objects alive at any moment (its
    # pending receive, its future, its parser's buffers), so with 3,750 sockets a process's young
    # collection walked ~45,000 objects, 20-40 ms of CPU; at a threshold of 7,000 that was 1-3
    # times a second per process in the bench/outages storm, each a pause every socket waited
    # out. At 30,000 none fell in the storm's 15 s. The sockets' own long-lived objects are frozen
    # out of sight in turn once a burst of them has connected (see gc_settle.py).
    gc.collect()
    gc.freeze()
    gc.set_threshold(30000, 10, 10)
    gc_settle.enable()
    # The event loop takes the GIL back from a thread-pool thread (the batched handshakes,
    # power reports and socket ends run the ORM there) after 1 ms instead of 5: in the
    # bench/outages storm at 5,000 devices the loop's hold-ups fell (lost -> cut shown p99
    # 110-132 ms instead of 143-193 ms; telemetry p99 without storm 22-32 ms instead of 51-315).
    sys.setswitchinterval(0.001)
