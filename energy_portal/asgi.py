"""ASGI entry point: HTTP through Django, WebSockets through Channels routing."""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "energy_portal.settings")
# ASGI runs sync code on a new thread per request: connections come from a pool in a server
# process (see settings/database.py), while single-threaded processes keep persistent ones. Only
# when this module starts Django: a process that imported settings first (manage.py runserver,
# tests) keeps its own choice, and passes nothing on to the processes it starts.
if not settings.configured:
    os.environ.setdefault("DATABASE_POOL_SIZE", "10")
# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from devices.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)}
)
