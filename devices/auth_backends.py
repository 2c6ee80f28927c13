"""Authentication backends: django-axes' lockout check, tolerant of calls without a request."""

from axes.backends import AxesStandaloneBackend


class LockoutBackend(AxesStandaloneBackend):
    """Refuses a sign-in while its user or address is locked out (see `settings.auth`).

    Every way in from outside passes the request (the sign-in page, the admin's, the token API),
    and that is what locks out. A call with none (a shell, Django's test client `login()`) has no
    address to count and is left to the next backend, where axes would raise instead.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
