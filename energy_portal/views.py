"""Pages of the portal as a whole (each app's pages are in its own views)."""

from prometheus_client import CONTENT_TYPE_LATEST

from django.conf import settings
from django.http import HttpResponse
from django.templatetags.static import static
from django.views.decorators.http import require_GET
from django.views.generic import RedirectView

from energy_portal.metrics import exposition, metrics_allowed


class FaviconRedirect(RedirectView):
    """Browsers ask for /favicon.ico whatever a page says (the API's JSON, the docs): send them
    to the icon's static URL, looked up per request (the manifest names it by its hash)."""

    permanent = False

    def get_redirect_url(self, *args, **kwargs) -> str:
        return static("img/favicon.svg")


@require_GET
def metrics(request):
    """Prometheus metrics of all the portal's processes, for a scraper holding METRICS_TOKEN or
    at an address in METRICS_ALLOW_IPS; anyone else gets 403 and nothing of the metrics."""
    if not metrics_allowed(
        authorization=request.headers.get("Authorization", ""),
        address=request.META.get("REMOTE_ADDR", ""),
        token=settings.METRICS_TOKEN,
        allow=settings.METRICS_ALLOW_IPS,
    ):
        return HttpResponse(
            "Forbidden: send Authorization: Bearer <METRICS_TOKEN>, or scrape from an address "
            "in METRICS_ALLOW_IPS.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
