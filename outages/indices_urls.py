"""The reliability indices route, included under `api/v1/` before the outages' own routes (so
`outages/indices/` is never read as an outage id)."""

from django.urls import path

from outages.indices_apis import ReliabilityIndicesApi

urlpatterns = [
    path("outages/indices/", ReliabilityIndicesApi.as_view(), name="api-outage-indices"),
]
