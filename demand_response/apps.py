from django.apps import AppConfig


class DemandResponseConfig(AppConfig):
    name = "demand_response"
    verbose_name = "Demand response"

    def ready(self) -> None:
        # Telemetry imports iots-right.json files but knows nothing of demand response: the
        # file's dr_events_auto_accept reaches the site's auto-response through this signal.
        from demand_response import services
        from telemetry.signals import iots_dr_auto_accept

        iots_dr_auto_accept.connect(
            services.site_auto_response_from_iots, dispatch_uid="dr-auto-accept-from-iots"
        )
