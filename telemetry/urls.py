"""Pages of the telemetry app: a site's energy history and the operators' analytics."""

from django.urls import path

from telemetry import views

urlpatterns = [
    path("history/", views.history_index, name="history"),
    path("sites/<int:site_id>/history/", views.site_history, name="site-history"),
    path("analytics/", views.analytics, name="analytics"),
]
