"""Signing in and out of the API with a token (see `devices.api_tokens`)."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from django.contrib.auth import authenticate, user_logged_in, user_logged_out

from devices.api_tokens import (
    ApiTokenAuthentication,
    api_token_issue,
    api_token_revoke,
    api_token_revoke_all,
)


class CredentialsSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(trim_whitespace=False, style={"input_type": "password"})


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send as `Authorization: Token <token>`.")


@extend_schema(tags=["Auth"])
class ObtainTokenApi(APIView):
    """Trade a username and password for a new API token, sent afterwards as
    `Authorization: Token <token>`. Anyone, without signing in (residents, operators and staff
    alike)."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=CredentialsSerializer,
        responses={
            200: TokenSerializer,
            400: OpenApiResponse(description="Wrong username or password."),
            429: OpenApiResponse(
                description="Too many failed sign-ins for this user or address; "
                "wait the seconds in `Retry-After`."
            ),
        },
    )
    def post(self, request):
        serializer = CredentialsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # Django's own request: django-axes counts the failure on it, and its middleware answers
        # 429 once the user or address is locked out.
        user = authenticate(request=request._request, **serializer.validated_data)
        if user is None:
            raise serializers.ValidationError(
                {"non_field_errors": ["Unable to log in with provided credentials."]}
            )
        token = api_token_issue(user=user)
        user_logged_in.send(sender=user.__class__, request=request._request, user=user)
        return Response(TokenSerializer({"token": token}).data)


def _signed_out(request) -> Response:
    """The answer to a sign-out, after Django's own signal (axes and audit hooks listen to it)."""
    user_logged_out.send(sender=request.user.__class__, request=request._request, user=request.user)
    return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["Auth"])
class LogoutApi(APIView):
    """Revoke the token this request was sent with. Any signed-in user, for their own token."""

    authentication_classes = [ApiTokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={204: None})
    def post(self, request):
        api_token_revoke(token=request.auth)
        return _signed_out(request)


@extend_schema(tags=["Auth"])
class LogoutAllApi(APIView):
    """Revoke every token of the signed-in user, on every client. Any signed-in user, for their
    own tokens."""

    authentication_classes = [ApiTokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={204: None})
    def post(self, request):
        api_token_revoke_all(user=request.user)
        return _signed_out(request)
