"""Pushing messages to groups of sockets from sync and async code alike."""

import json

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer


def live_event(payload: dict) -> dict:
    """A group message carrying a JSON text that viewers forward as is (encoded once, not per
    viewer)."""
    return {"type": "live.message", "text": json.dumps(payload, separators=(",", ":"))}


async def agroup_send(groups: list[str], message: dict) -> None:
    layer = get_channel_layer()
    for group in groups:
        await layer.group_send(group, message)


def group_send(groups: list[str], message: dict) -> None:
    async_to_sync(agroup_send)(groups, message)
