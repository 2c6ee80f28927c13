from importlib import import_module

from channels.auth import AuthMiddleware
from channels.middleware import BaseMiddleware
from channels.security.websocket import AllowedHostsOriginValidator
from channels.sessions import CookieMiddleware

from django.conf import settings
from django.urls import path

from devices import consumers


class SocketSessionMiddleware(BaseMiddleware):
    """Channels' SessionMiddleware for sockets, without its wrapper around `send`.

    That wrapper saves a modified session when an HTTP response starts. A socket sends no HTTP
    response, so for a socket it only inspected every outgoing message (two lazy-object look-ups
    a message on the live feed's hot path). Here the session is read (it names the user), never
    saved; it is loaded from its store on first use, as with Channels' middleware.
    """

    async def __call__(self, scope, receive, send):
        store = import_module(settings.SESSION_ENGINE).SessionStore
        session = store(scope["cookies"].get(settings.SESSION_COOKIE_NAME))
        return await super().__call__({**scope, "session": session}, receive, send)


websocket_urlpatterns = [
    # Pis: bearer token, no browser Origin to check.
    path("ws/devices/", consumers.DeviceConsumer.as_asgi()),
    # Browsers: the session names the user; the Origin must be one of ours.
    path(
        "ws/live/",
        AllowedHostsOriginValidator(
            CookieMiddleware(
                SocketSessionMiddleware(AuthMiddleware(consumers.LiveConsumer.as_asgi()))
            )
        ),
    ),
]
