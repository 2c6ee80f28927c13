import time, pytest
from channels.testing import WebsocketCommunicator
from energy_portal.asgi import application

@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_x():
    c = WebsocketCommunicator(application, "/ws/devices/", headers=[(b"authorization", b"Bearer x")])
    t=time.monotonic()
    r = await c.connect()
    print("connect", r, time.monotonic()-t)
    t=time.monotonic()
    await c.disconnect()
    print("disc", time.monotonic()-t)
