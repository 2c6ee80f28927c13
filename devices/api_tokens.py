"""API tokens for people (`Authorization: Token <key>`), kept by django-rest-knox.

Only a SHA-512 digest of each token is stored, so a database dump gives no usable token. Every
sign-in gets its own token with its own expiry (`API_TOKEN_TTL_DAYS`), so one client can be
signed out without the others. Device tokens (`Bearer`) are another thing: see
`devices.authentication`.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox.auth import TokenAuthentication
from knox.models import AuthToken
from rest_framework import exceptions

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone


def api_token_issue(*, user: AbstractBaseUser) -> str:
    """A new token for `user`; only its digest is kept, so the caller must hand it out now.

    The user's expired tokens are deleted here, at sign-in, rather than on every request.
    """
    AuthToken.objects.filter(user=user, expiry__lt=timezone.now()).delete()
    _, token = AuthToken.objects.create(user=user)
    return token


def api_token_revoke(*, token: AuthToken) -> None:
    """Sign out the one client that holds `token`."""
    token.delete()


def api_token_revoke_all(*, user: AbstractBaseUser) -> int:
    """Sign `user` out of every client; returns how many tokens were revoked."""
    deleted, _ = AuthToken.objects.filter(user=user).delete()
    return deleted


class ApiTokenAuthentication(TokenAuthentication):
    """knox's authentication, refusing a key that is not UTF-8 with a 401 (knox itself would fail
    with a UnicodeDecodeError, a 500) and a key of the wrong shape without a database look-up.

    knox also loads all of the user's other tokens on every request to delete the expired ones;
    here only the token sent is checked, and `api_token_issue` sweeps the rest.
    """

    def authenticate_credentials(self, token: bytes):
        try:
            text = token.decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        if not text.isascii() or not text.isalnum():
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(token)

    def _cleanup_token(self, auth_token) -> bool:
        # True: expired, so knox skips it and the request fails as with an unknown token.
        return auth_token.expiry is not None and auth_token.expiry < timezone.now()


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes `ApiTokenAuthentication`."""

    target_class = ApiTokenAuthentication
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        definition = build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix="Token"
        )
        definition["description"] = (
            "A token from POST /api/v1/auth/token/, sent as `Authorization: Token <key>`."
        )
        return definition
