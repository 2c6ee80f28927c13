from django.apps import AppConfig


class OutagesConfig(AppConfig):
    name = "outages"
    verbose_name = "Outages and credits"
