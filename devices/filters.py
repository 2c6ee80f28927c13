"""Filters of the registry's list APIs: a related row is a choice only if the caller may see it."""

import django_filters

from devices import selectors
from devices.models import Device, Feeder, Room, Site, Substation, Transformer
from energy_portal.filters import visible_to_caller

substations = visible_to_caller(Substation, selectors.substation_list)
transformers = visible_to_caller(Transformer, selectors.transformer_list)
feeders = visible_to_caller(Feeder, selectors.feeder_list)
sites = visible_to_caller(Site, selectors.site_list)
rooms = visible_to_caller(Room, selectors.room_list)


class TransformerFilter(django_filters.FilterSet):
    substation = django_filters.ModelChoiceFilter(queryset=substations)

    class Meta:
        model = Transformer
        fields = ["substation"]


class FeederFilter(django_filters.FilterSet):
    transformer = django_filters.ModelChoiceFilter(queryset=transformers)

    class Meta:
        model = Feeder
        fields = ["transformer"]


class SiteFilter(django_filters.FilterSet):
    feeder = django_filters.ModelChoiceFilter(queryset=feeders)

    class Meta:
        model = Site
        fields = ["feeder", "currency", "timezone"]


class RoomFilter(django_filters.FilterSet):
    site = django_filters.ModelChoiceFilter(queryset=sites)

    class Meta:
        model = Room
        fields = ["site"]


class DeviceFilter(django_filters.FilterSet):
    site = django_filters.ModelChoiceFilter(queryset=sites)
    room = django_filters.ModelChoiceFilter(queryset=rooms)
    site__feeder = django_filters.ModelChoiceFilter(field_name="site__feeder", queryset=feeders)

    class Meta:
        model = Device
        fields = ["site", "room", "kind", "online", "controllable", "site__feeder"]
