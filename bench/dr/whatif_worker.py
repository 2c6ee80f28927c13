"""The Celery worker as before dispatch was batched (the "before" of bench/dr): each device's
`curtail` / `restore` issued by `command_issue` one by one (an insert, a publish to the server
processes and a live send per device). Everything else is the portal's own worker.

    python -m bench.dr.whatif_worker <celery worker options>
"""

import sys


def _per_device(*, device_ids, name, args=None, ttl=None):
    from devices.models import Device
    from devices.services import DEFAULT_COMMAND_TTL, command_issue

    ttl = DEFAULT_COMMAND_TTL if ttl is None else ttl
    devices = Device.objects.in_bulk(list(device_ids))
    return {
        pk: command_issue(device=device, name=name, args=args, ttl=ttl).id
        for pk, device in sorted(devices.items())
    }


def main() -> None:
    import django

    django.setup()
    from demand_response import services

    services.commands_issue = _per_device
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "energy_portal", "worker", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
