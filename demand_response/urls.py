from rest_framework.routers import SimpleRouter

from django.urls import path

from demand_response import apis

router = SimpleRouter()
router.register("dr/programs", apis.ProgramViewSet, basename="dr-program")
router.register("dr/events", apis.EventViewSet, basename="dr-event")
router.register("dr/invitations", apis.InvitationViewSet, basename="dr-invitation")
router.register("openadr/connections", apis.VtnConnectionViewSet, basename="openadr-connection")

urlpatterns = [
    *router.urls,
    path(
        "sites/<int:site_id>/auto-response/",
        apis.AutoResponseApi.as_view(),
        name="api-site-auto-response",
    ),
]
