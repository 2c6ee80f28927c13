"""`LeanDispatch`, the consumers' loop: Channels' rules (one message at a time, socket and
channel layer alike; an error in either ends the consumer) without a task per message."""

import asyncio

import pytest
import pytest_asyncio
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.testing import WebsocketCommunicator

from devices.consumers import LeanDispatch

# Channels' disconnect handler closes the thread's old database connections; a connection left
# in a worker thread by an earlier test makes that a database access.
pytestmark = [pytest.mark.asyncio, pytest.mark.django_db]


class Probe(LeanDispatch, AsyncWebsocketConsumer):
    """Echoes frames; "slow" takes a while; channel-layer messages are noted, or fail/stop."""

    instances: list["Probe"] = []

    async def connect(self):
        self.log: list[str] = []
        Probe.instances.append(self)
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        self.log.append(f"socket {text_data} begins")
        if text_data == "slow":
            await asyncio.sleep(0.3)
        self.log.append(f"socket {text_data} ends")
        await self.send(text_data=f"echo {text_data}")

    async def probe_note(self, event):
        self.log.append(f"layer {event['text']}")
        await self.send(text_data=f"layer {event['text']}")

    async def probe_fail(self, event):
        raise RuntimeError("a channel-layer handler failed")

    async def probe_stop(self, event):
        raise StopConsumer


@pytest_asyncio.fixture
async def probe():
    Probe.instances.clear()
    communicator = WebsocketCommunicator(Probe.as_asgi(), "/probe/")
    connected, _ = await communicator.connect()
    assert connected
    yield communicator, Probe.instances[-1]
    await communicator.disconnect()


async def connected() -> tuple[WebsocketCommunicator, Probe]:
    """A probe for a test that ends it itself (no disconnect afterwards)."""
    Probe.instances.clear()
    communicator = WebsocketCommunicator(Probe.as_asgi(), "/probe/")
    assert (await communicator.connect())[0]
    return communicator, Probe.instances[-1]


async def test_socket_and_layer_messages_are_both_handled(probe):
    communicator, consumer = probe
    await communicator.send_to(text_data="one")
    assert await communicator.receive_from() == "echo one"
    await consumer.channel_layer.send(consumer.channel_name, {"type": "probe.note", "text": "a"})
    assert await communicator.receive_from() == "layer a"
    await communicator.send_to(text_data="two")
    assert await communicator.receive_from() == "echo two"


async def test_a_layer_message_waits_for_the_socket_message_being_handled(probe):
    communicator, consumer = probe
    await communicator.send_to(text_data="slow")
    await asyncio.sleep(0.05)  # the slow frame is being handled
    await consumer.channel_layer.send(consumer.channel_name, {"type": "probe.note", "text": "b"})
    assert await communicator.receive_from() == "echo slow"
    assert await communicator.receive_from() == "layer b"
    assert consumer.log == ["socket slow begins", "socket slow ends", "layer b"]


async def test_socket_messages_are_handled_in_order_one_at_a_time(probe):
    communicator, consumer = probe
    for text in ("slow", "x", "y"):
        await communicator.send_to(text_data=text)
    assert [await communicator.receive_from() for _ in range(3)] == [
        "echo slow",
        "echo x",
        "echo y",
    ]
    assert consumer.log == [
        "socket slow begins",
        "socket slow ends",
        "socket x begins",
        "socket x ends",
        "socket y begins",
        "socket y ends",
    ]


async def test_an_error_in_a_layer_handler_ends_the_consumer_with_it():
    communicator, consumer = await connected()
    await consumer.channel_layer.send(consumer.channel_name, {"type": "probe.fail"})
    with pytest.raises(RuntimeError, match="a channel-layer handler failed"):
        await communicator.wait(timeout=3)


async def test_a_layer_failure_lets_the_socket_message_being_handled_finish_then_ends():
    # given the channel layer's next receive fails while a slow socket message is handled
    communicator, consumer = await connected()
    broken = asyncio.Event()

    async def failing_receive():
        await broken.wait()
        raise ConnectionError("the channel layer's Redis went away")

    consumer.channel_receive = failing_receive  # taken by the listener's next receive
    await consumer.channel_layer.send(consumer.channel_name, {"type": "probe.note", "text": "a"})
    assert await communicator.receive_from() == "layer a"
    await communicator.send_to(text_data="slow")
    await asyncio.sleep(0.05)
    broken.set()

    # then the message is handled to its end, as in Channels, and the consumer ends with it
    assert await communicator.receive_from() == "echo slow"
    with pytest.raises(ConnectionError, match="went away"):
        await communicator.wait(timeout=3)
    assert consumer.log[-1] == "socket slow ends"
    assert not asyncio.current_task().cancelling()


async def test_a_layer_failure_while_waiting_for_the_socket_ends_the_consumer_at_once():
    communicator, consumer = await connected()
    await consumer.channel_layer.send(consumer.channel_name, {"type": "probe.fail"})
    with pytest.raises(RuntimeError, match="a channel-layer handler failed"):
        await communicator.wait(timeout=3)
    assert communicator.future.done()


async def test_stop_consumer_from_a_layer_handler_ends_the_consumer_cleanly():
    communicator, consumer = await connected()
    await consumer.channel_layer.send(consumer.channel_name, {"type": "probe.stop"})
    await communicator.wait(timeout=3)
    assert communicator.future.done() and communicator.future.exception() is None
    assert not communicator.future.cancelled()


def _layer_listeners() -> list[asyncio.Task]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "from_layer" in task.get_coro().__qualname__
    ]


async def test_leaving_stops_listening_to_the_channel_layer(probe):
    communicator, _consumer = probe
    assert len(_layer_listeners()) == 1
    await communicator.disconnect()
    await asyncio.sleep(0.05)
    assert communicator.future.done()
    assert _layer_listeners() == []
