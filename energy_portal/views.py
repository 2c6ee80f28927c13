"""Pages of the portal as a whole (each app's pages are in its own views)."""

from django.templatetags.static import static
from django.views.generic import RedirectView


class FaviconRedirect(RedirectView):
    """Browsers ask for /favicon.ico whatever a page says (the API's JSON, the docs): send them
    to the icon's static URL, looked up per request (the manifest names it by its hash)."""

    permanent = False

    def get_redirect_url(self, *args, **kwargs) -> str:
        return static("img/favicon.svg")
