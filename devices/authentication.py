"""Device tokens on the REST API (`Authorization: Bearer <device token>`), for batch ingest."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework import authentication, exceptions

from django.contrib.auth.models import AnonymousUser

from devices.selectors import device_by_token


class DeviceTokenAuthentication(authentication.BaseAuthentication):
    """Authenticates a device: `request.user` stays anonymous, `request.auth` is the Device."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <device token>'.")
        device = device_by_token(token=header[1].decode("latin-1"))
        if device is None:
            raise exceptions.AuthenticationFailed("Unknown or rotated device token.")
        return AnonymousUser(), device

    def authenticate_header(self, request):
        return self.keyword


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    """The device token in the OpenAPI schema: an HTTP bearer scheme, registered when this module
    is imported (the views that use the authentication import it)."""

    target_class = DeviceTokenAuthentication
    name = "deviceToken"

    def get_security_definition(self, auto_schema):
        scheme = build_bearer_security_scheme_object(
            header_name="HTTP_AUTHORIZATION", token_prefix=DeviceTokenAuthentication.keyword
        )
        scheme["description"] = (
            "A device's secret token, shown once when the device is created or its token "
            "rotated. Sent by Pis and gateways: `Authorization: Bearer <device token>`."
        )
        return scheme
