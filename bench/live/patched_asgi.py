"""What-if variant of the portal's ASGI app, for measuring a proposed fix (config suffix `+fast`).

Channels (4.2+) runs `aclose_old_connections()` - a `sync_to_async` hop to the one thread-sensitive
worker thread - before *every* message a consumer handles: each device frame and each `live.message`
a viewer gets. The portal's consumers reach the database only through `database_sync_to_async`,
which already closes stale connections around each call, so the hop buys nothing on the hot path.
This module only patches `dispatch` of the two consumers in the benchmark's server process; it does
not change the portal's code. The proposed change to `devices/consumers.py` is in the README.
"""

from energy_portal.asgi import application  # sets Django up before the consumers are imported


async def _dispatch(self, message):
    from channels.consumer import get_handler_name

    handler = getattr(self, get_handler_name(message), None)
    if handler is None:
        raise ValueError(f"No handler for message type {message['type']}")
    await handler(message)


def _patch() -> None:
    from devices import consumers

    consumers.DeviceConsumer.dispatch = _dispatch
    consumers.LiveConsumer.dispatch = _dispatch


_patch()
__all__ = ["application"]
