from rest_framework.routers import DefaultRouter

from django.urls import path

from devices import apis

router = DefaultRouter()
router.register("substations", apis.SubstationViewSet, basename="substation")
router.register("transformers", apis.TransformerViewSet, basename="transformer")
router.register("feeders", apis.FeederViewSet, basename="feeder")
router.register("sites", apis.SiteViewSet, basename="site")
router.register("rooms", apis.RoomViewSet, basename="room")
router.register("devices", apis.DeviceViewSet, basename="device")
router.register("sensors", apis.SensorViewSet, basename="sensor")

urlpatterns = [
    *router.urls,
    path("commands/<uuid:pk>/", apis.CommandDetailApi.as_view(), name="command-detail"),
]
