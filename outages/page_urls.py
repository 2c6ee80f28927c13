"""The outage pages (not the API): wired at the site's root by energy_portal/urls.py."""

from django.urls import path

from outages import views

urlpatterns = [
    path("outages/", views.history, name="outage-history"),
    path("outages/grid/", views.grid, name="outage-grid"),
    path("outages/open/", views.open_outages_panel, name="outage-open-panel"),
    path("outages/site/<int:site_id>/", views.site_panel, name="outage-site-panel"),
]
