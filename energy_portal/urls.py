from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from devices import urls as device_urls
from devices import views as device_views
from devices.auth_apis import LogoutAllApi, LogoutApi, ObtainTokenApi
from energy_portal.apis import ApiNotFound, HealthApi
from energy_portal.site_apis import SiteWithPolicyViewSet
from energy_portal.views import FaviconRedirect, metrics
from telemetry.apis import IngestApi, SourcesApi
from telemetry.history_apis import GridEnergyApi, NotReportingApi, SiteEnergyApi
from telemetry.query_apis import AggregatesApi, ReadingsApi, StatsApi

site_router = SimpleRouter()
site_router.register("sites", SiteWithPolicyViewSet, basename="site")
SITE_ROUTES = {"site-list", "site-detail"}

api_v1 = [
    path("auth/token/", ObtainTokenApi.as_view(), name="api-token"),
    path("auth/logout/", LogoutApi.as_view(), name="api-logout"),
    path("auth/logout-all/", LogoutAllApi.as_view(), name="api-logout-all"),
    path("health/", HealthApi.as_view(), name="api-health"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("ingest/", IngestApi.as_view(), name="api-ingest"),
    path("sources/", SourcesApi.as_view(), name="api-sources"),
    path("readings/", ReadingsApi.as_view(), name="api-readings"),
    path("aggregates/", AggregatesApi.as_view(), name="api-aggregates"),
    path("stats/", StatsApi.as_view(), name="api-stats"),
    path("sites/<int:site_id>/energy/", SiteEnergyApi.as_view(), name="api-site-energy"),
    path("analytics/energy/", GridEnergyApi.as_view(), name="api-analytics-energy"),
    path("analytics/not-reporting/", NotReportingApi.as_view(), name="api-analytics-not-reporting"),
    # `sites/` is served by the wiring's viewset, which adds each site's credit policy (devices
    # must not import outages); the rest of the registry's routes are devices' own.
    path("", include(site_router.urls)),
    path("", include([p for p in device_urls.urlpatterns if p.name not in SITE_ROUTES])),
    path("", include("outages.indices_urls")),  # before outages/{id}/
    path("", include("outages.urls")),
    path("", include("demand_response.urls")),
    # Last: a path that matched nothing (an endpoint's without its slash: 308 to it).
    re_path(r"^.*$", ApiNotFound.as_view(), name="api-not-found"),
]

admin.site.site_header = "Energy Portal administration"
admin.site.site_title = "Energy Portal admin"
admin.site.index_title = "Sites, devices, outages and demand response"

urlpatterns = [
    path("", device_views.home, name="home"),
    path("favicon.ico", FaviconRedirect.as_view()),
    path("metrics", metrics, name="metrics"),
    path("dashboard/", device_views.dashboard, name="dashboard"),
    path("fleet/", device_views.fleet, name="fleet"),
    path("devices/<slug:uid>/", device_views.device_detail, name="device-page"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="registration/login.html"),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("", include("outages.page_urls")),
    path("", include("demand_response.page_urls")),
    path("", include("telemetry.urls")),
]
