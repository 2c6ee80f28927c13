"""The answer to a sign-in refused because of too many failures (django-axes' lockout callable).

The API gets its usual JSON error, the pages a page that says to wait; both are 429 with
`Retry-After`. Attempts refused during a lockout are not counted (settings.auth), so the full
cool-off is the longest the caller may still have to wait.
"""

import math

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

API_PREFIX = "/api/"


def lockout_seconds() -> int:
    return math.ceil(settings.AXES_COOLOFF_TIME.total_seconds())


def lockout_response(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    # axes passes (request, original_response, credentials), or in its async path (request,
    # credentials): neither is needed here.
    wait_s = lockout_seconds()
    minutes = math.ceil(wait_s / 60)
    if request.path.startswith(API_PREFIX):
        response = JsonResponse(
            {
                "detail": f"Too many failed sign-ins. Try again in {minutes} minutes.",
                "retry_after_s": wait_s,
            },
            status=429,
        )
    else:
        response = render(
            request,
            "registration/locked_out.html",
            {"minutes": minutes, "failure_limit": settings.AXES_FAILURE_LIMIT},
            status=429,
        )
    response["Retry-After"] = str(wait_s)
    return response
