from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator

from django.urls import path

from devices import consumers

websocket_urlpatterns = [
    # Pis: bearer token, no browser Origin to check.
    path("ws/devices/", consumers.DeviceConsumer.as_asgi()),
    # Browsers: the session names the user; the Origin must be one of ours.
    path(
        "ws/live/",
        AllowedHostsOriginValidator(AuthMiddlewareStack(consumers.LiveConsumer.as_asgi())),
    ),
]
