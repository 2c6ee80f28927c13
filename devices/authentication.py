"""Device tokens on the REST API (`Authorization: Bearer <device token>`), for batch ingest."""

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
