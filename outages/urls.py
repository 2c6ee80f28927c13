from rest_framework.routers import SimpleRouter

from outages import apis

router = SimpleRouter()
router.register("outages", apis.OutageViewSet, basename="outage")
router.register("credit-policies", apis.CreditPolicyViewSet, basename="credit-policy")
router.register("credits", apis.CreditEntryViewSet, basename="credit-entry")

urlpatterns = router.urls
