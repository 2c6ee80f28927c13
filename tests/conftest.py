"""Shared fixtures: users of each role and a small registry around them."""

import gc
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection

from devices import services
from devices.api_tokens import api_token_issue
from devices.models import Feeder, Room, Site, Substation, Transformer
from energy_portal import gc_settle
from energy_portal.redis_client import sync_client
from tests.e2e import servers

PASSWORD = "correct-horse-battery"

SENSORS = [
    {"key": "power_w", "kind": "power", "unit": "W"},
    {"key": "voltage_v", "kind": "voltage", "unit": "V"},
]


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # Users are made in most tests; the production hasher would spend ~0.25 s on each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def no_login_failures_left_over():
    """Failed sign-ins are counted in Redis (django-axes) across processes and runs: start every
    test with none, so one test's wrong passwords never lock out another's users."""
    redis = sync_client()
    stale = list(redis.scan_iter(match=f"{settings.CACHES['default']['KEY_PREFIX']}:*:axes-*"))
    if stale:
        redis.delete(*stale)


@pytest.fixture
def make_user(db):
    def make(username: str, *, staff: bool = False, operator: bool = False):
        user = get_user_model().objects.create_user(
            username=username, password=PASSWORD, is_staff=staff, is_superuser=staff
        )
        if operator:
            group, _ = Group.objects.get_or_create(name=settings.OPERATORS_GROUP)
            user.groups.add(group)
        return user

    return make


@pytest.fixture
def admin_user(make_user):
    return make_user("root", staff=True)


@pytest.fixture
def operator(make_user):
    return make_user("olga", operator=True)


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def feeder(db):
    substation = Substation.objects.create(code="SUB-1", name="North")
    transformer = Transformer.objects.create(code="TR-1", name="T1", substation=substation)
    return Feeder.objects.create(code="FD-1", name="F1", transformer=transformer)


def _site_with_device(*, name: str, resident, feeder, uid: str, cpe: str):
    site = Site.objects.create(
        name=name, timezone="Europe/Lisbon", tariff_per_kwh=Decimal("0.2"), cpe=cpe, feeder=feeder
    )
    site.residents.add(resident)
    room = Room.objects.create(site=site, name="Kitchen")
    device, token = services.device_create(
        uid=uid, site=site, room=room, controllable=True, flexible_kw=Decimal("2"), sensors=SENSORS
    )
    return site, room, device, token


@pytest.fixture
def alice_home(alice, feeder):
    """Alice's site with one room and a controllable Pi `pi-a1` measuring power and voltage."""
    site, room, device, token = _site_with_device(
        name="Alice home", resident=alice, feeder=feeder, uid="pi-a1", cpe="PT0001"
    )
    return {"site": site, "room": room, "device": device, "token": token}


@pytest.fixture
def bob_home(bob, feeder):
    site, room, device, token = _site_with_device(
        name="Bob home", resident=bob, feeder=feeder, uid="pi-b1", cpe="PT0002"
    )
    return {"site": site, "room": room, "device": device, "token": token}


@pytest.fixture
def api_token_for(db):
    """A usable API token (the string a client sends as `Authorization: Token <it>`) for a user;
    one per user within a test, as one signed-in tool would hold."""
    issued: dict[int, str] = {}

    def make(user) -> str:
        if user.pk not in issued:
            issued[user.pk] = api_token_issue(user=user)
        return issued[user.pk]

    return make


@pytest.fixture
def api_client_for(api_token_for):
    """An API client authenticated the way an external tool is: with an API token."""

    def make(user) -> APIClient:
        client = APIClient()
        if user is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(user)}")
        return client

    return make


@pytest.fixture(scope="module")
def portal(django_db_setup):
    """One real portal server (the production ASGI server) on the test database and Redis, for
    the tests of one module."""
    with servers.running(
        1, database_url=servers.database_url(connection.settings_dict), redis_url=settings.REDIS_URL
    ) as running:
        yield running[0]


@pytest.fixture
def gc_settler(monkeypatch):
    """A fresh settler, enabled, with a burst of 3 sockets over after 50 ms; the process's
    collector as it was afterwards."""
    monkeypatch.setattr(gc_settle, "BURST_MIN", 3)
    monkeypatch.setattr(gc_settle, "QUIET_S", 0.05)
    monkeypatch.setattr(gc_settle, "THAW_CLOSED", 2)
    fresh = gc_settle.Settler()
    fresh.enabled = True
    monkeypatch.setattr(gc_settle, "settler", fresh)
    yield fresh
    if fresh._watch is not None:
        fresh._watch.cancel()
    gc.unfreeze()
