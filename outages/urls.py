from rest_framework.routers import SimpleRouter

from django.urls import path

from outages import apis

router = SimpleRouter()
router.register("outages", apis.OutageViewSet, basename="outage")
router.register("credit-policies", apis.CreditPolicyViewSet, basename="credit-policy")
router.register("credits", apis.CreditEntryViewSet, basename="credit-entry")

urlpatterns = [
    path("outages/suspected/", apis.SuspectedOutageListApi.as_view(), name="api-suspected-outages"),
    *router.urls,
]
