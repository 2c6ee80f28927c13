"""The demand-response pages (not the API): wired at the site's root by energy_portal/urls.py."""

from django.urls import path

from demand_response import views

urlpatterns = [
    path("dr/events/", views.events, name="dr-page-events"),
    path("dr/events/<int:event_id>/", views.event, name="dr-page-event"),
    path("dr/events/<int:event_id>/summary/", views.event_summary, name="dr-page-event-summary"),
    path("dr/events/<int:event_id>/cancel/", views.event_cancel, name="dr-page-event-cancel"),
    path("dr/events/<int:event_id>/report.csv", views.event_report_csv, name="dr-page-event-csv"),
    path("dr/site/<int:site_id>/", views.site_panel, name="dr-page-site-panel"),
    path(
        "dr/invitations/<int:invitation_id>/respond/",
        views.invitation_respond,
        name="dr-page-invitation-respond",
    ),
]
