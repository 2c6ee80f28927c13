from django.contrib import admin  # noqa: F401  (used by the admin classes below)
