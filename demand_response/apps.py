from django.apps import AppConfig


class DemandResponseConfig(AppConfig):
    name = "demand_response"
    verbose_name = "Demand response"
