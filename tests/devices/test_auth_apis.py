"""API sign-in: tokens kept as digests, expiry and sign-out, and brute force refused (429)."""

import hashlib
from datetime import timedelta

import pytest
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from knox.models import AuthToken
from rest_framework.test import APIClient

from django.conf import settings
from django.db import connection
from django.utils import timezone

from tests.conftest import PASSWORD

API = "/api/v1/"
TOKEN = f"{API}auth/token/"
HERE, THERE = "192.0.2.10", "198.51.100.20"  # documentation addresses: client addresses only


def sign_in(username: str, password: str, *, address: str = HERE):
    return APIClient().post(
        TOKEN, {"username": username, "password": password}, format="json", REMOTE_ADDR=address
    )


def client_with(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def fail_until_locked(username: str, *, address: str = HERE) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert sign_in(username, "wrong", address=address).status_code in (400, 429)


# --- tokens at rest ---------------------------------------------------------------------------


def test_only_a_digest_of_the_token_is_stored(alice):
    token = sign_in("alice", PASSWORD).json()["token"]

    stored = AuthToken.objects.get(user=alice)
    assert stored.digest == hashlib.sha512(token.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM knox_authtoken")
        row = cursor.fetchone()
    assert token not in " ".join(str(value) for value in row)


def test_each_sign_in_gets_its_own_token_that_expires_after_the_configured_days(alice):
    first = sign_in("alice", PASSWORD).json()["token"]
    second = sign_in("alice", PASSWORD).json()["token"]

    assert first != second
    expiries = AuthToken.objects.filter(user=alice).values_list("expiry", flat=True)
    ttl = settings.REST_KNOX["TOKEN_TTL"]
    for expiry in expiries:
        assert timezone.now() + ttl - timedelta(minutes=1) < expiry <= timezone.now() + ttl


def test_an_expired_token_is_refused_with_401(alice):
    token = sign_in("alice", PASSWORD).json()["token"]
    AuthToken.objects.filter(user=alice).update(expiry=timezone.now() - timedelta(seconds=1))

    response = client_with(token).get(f"{API}sites/")

    assert response.status_code == 401


@pytest.mark.parametrize(
    "key", [b"\xe9t\xe9", "a" * 64 + "!", "a b"], ids=["latin-1", "punctuation", "space"]
)
def test_a_malformed_token_is_refused_with_401_not_an_error(db, key):
    header = key if isinstance(key, bytes) else key.encode()

    response = APIClient().get(f"{API}sites/", HTTP_AUTHORIZATION=b"Token " + header)

    assert response.status_code == 401


# --- signing out ------------------------------------------------------------------------------


def test_logout_revokes_only_the_token_it_was_sent_with(alice):
    laptop = sign_in("alice", PASSWORD).json()["token"]
    phone = sign_in("alice", PASSWORD).json()["token"]

    response = client_with(laptop).post(f"{API}auth/logout/")

    assert response.status_code == 204
    assert client_with(laptop).get(f"{API}sites/").status_code == 401
    assert client_with(phone).get(f"{API}sites/").status_code == 200


def test_logout_all_revokes_every_token_of_the_user_and_no_one_elses(alice, bob):
    laptop = sign_in("alice", PASSWORD).json()["token"]
    phone = sign_in("alice", PASSWORD).json()["token"]
    bobs = sign_in("bob", PASSWORD).json()["token"]

    response = client_with(phone).post(f"{API}auth/logout-all/")

    assert response.status_code == 204
    assert client_with(laptop).get(f"{API}sites/").status_code == 401
    assert client_with(phone).get(f"{API}sites/").status_code == 401
    assert client_with(bobs).get(f"{API}sites/").status_code == 200


def test_logout_without_a_token_is_401(db):
    assert APIClient().post(f"{API}auth/logout/").status_code == 401


def test_a_new_sign_in_sweeps_the_users_expired_tokens(alice):
    sign_in("alice", PASSWORD)
    AuthToken.objects.filter(user=alice).update(expiry=timezone.now() - timedelta(days=1))

    sign_in("alice", PASSWORD)

    assert AuthToken.objects.filter(user=alice).count() == 1


# --- brute force ------------------------------------------------------------------------------


def test_failures_up_to_the_limit_answer_400_then_the_user_is_refused_with_429(alice):
    answers = [
        sign_in("alice", "wrong").status_code for _ in range(settings.AXES_FAILURE_LIMIT - 1)
    ]
    assert answers == [400] * (settings.AXES_FAILURE_LIMIT - 1)

    last = sign_in("alice", "wrong")

    assert last.status_code == 429
    assert last["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    assert "Try again in" in last.json()["detail"]


def test_a_locked_out_user_is_refused_even_with_the_right_password(alice):
    fail_until_locked("alice")

    response = sign_in("alice", PASSWORD)

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert not AuthToken.objects.filter(user=alice).exists()


def test_a_locked_out_user_is_refused_from_another_address_too(alice):
    fail_until_locked("alice", address=HERE)

    assert sign_in("alice", PASSWORD, address=THERE).status_code == 429


def test_an_address_that_guessed_too_often_is_refused_for_every_user(alice, bob):
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(f"nobody-{n}", "wrong", address=HERE)

    assert sign_in("bob", PASSWORD, address=HERE).status_code == 429


def test_refusals_at_a_locked_address_count_against_no_one_and_do_not_extend_it(alice, bob):
    # given an address locked out by someone guessing other names
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(f"nobody-{n}", "wrong", address=HERE)
    # when bob, sharing that network, tries again and again with his right password
    refused = [sign_in("bob", PASSWORD, address=HERE).status_code for _ in range(10)]
    # then each is refused, yet bob is not locked out anywhere else
    assert refused == [429] * 10
    assert sign_in("bob", PASSWORD, address=THERE).status_code == 200


def test_another_user_from_another_address_is_not_affected(alice, bob):
    fail_until_locked("alice", address=HERE)

    response = sign_in("bob", PASSWORD, address=THERE)

    assert response.status_code == 200
    assert response.json()["token"]


def test_a_successful_sign_in_clears_the_users_earlier_failures(alice):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        sign_in("alice", "wrong")
    assert sign_in("alice", PASSWORD).status_code == 200

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in("alice", "wrong").status_code == 400
    assert sign_in("alice", PASSWORD).status_code == 200


def test_the_limit_is_the_configured_number_of_failures(settings, alice):
    settings.AXES_FAILURE_LIMIT = 2

    assert sign_in("alice", "wrong").status_code == 400
    assert sign_in("alice", "wrong").status_code == 429


# --- schema -----------------------------------------------------------------------------------


def test_schema_describes_the_token_scheme_and_the_sign_out_endpoints(db):
    schema = APIClient().get(f"{API}schema/?format=json").json()

    scheme = schema["components"]["securitySchemes"]["apiToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    assert {f"{API}auth/logout/", f"{API}auth/logout-all/"} <= set(schema["paths"])
    assert "429" in schema["paths"][TOKEN]["post"]["responses"]


def test_schema_generation_warns_about_nothing_of_ours(db):
    # drf-spectacular prints each warning once per process, so an earlier schema in the run would
    # hide it: start from none and read the warnings it kept.
    GENERATOR_STATS.reset()

    SchemaGenerator().get_schema(request=None, public=True)

    warnings = " ".join(GENERATOR_STATS._warn_cache)
    for name in ("ApiTokenAuthentication", "ObtainTokenApi", "LogoutApi", "LogoutAllApi"):
        assert name not in warnings
