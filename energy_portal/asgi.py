"""ASGI entry point: HTTP through Django, WebSockets through Channels routing."""

import gc
import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "energy_portal.settings")
# ASGI runs sync code on a new thread per request: connections come from a pool in a server
# process (see settings/database.py), while single-threaded processes keep persistent ones. Only
# when this module starts Django: a process that imported settings first (manage.py runserver,
# tests) keeps its own choice, and passes nothing on to the processes it starts.
server_process = not settings.configured
if server_process:
    os.environ.setdefault("DATABASE_POOL_SIZE", "10")
# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from devices.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)}
)

if server_process:
    # The cyclic collector, tuned for a long-running server holding thousands of sockets. The
    # start-up heap (Django, the apps, their libraries: about 130,000 objects that live as long as
    # the process) is frozen out of the collector's sight, and young collections are ten times
    # rarer, so the short-lived objects of messages in flight die before they are promoted.
    # Without this, full collections walked ~280,000 objects per 1,000 sockets and held the
    # event loop 100-260 ms each, several per connection storm and about one a minute at 4,000
    # msg/s (bench/live `+probe`). With it, none ran in 3 minutes at 4,000 msg/s, and p99 there
    # went from 23.4 to 9.6 ms.
    gc.freeze()
    gc.set_threshold(7000, 10, 10)
