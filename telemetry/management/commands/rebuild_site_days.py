from django.core.management.base import BaseCommand, CommandError

from devices.models import Site
from telemetry.rollups import site_days_invalidate


class Command(BaseCommand):
    help = (
        "Have the stored per-site local days computed again (the rollup refresh stores them "
        "within minutes; answers are right meanwhile). Run it after changing what a site's "
        "energy is made of: its time zone, a device moved, deleted or turned into a meter, a "
        "sensor's kind or unit."
    )

    def add_arguments(self, parser):
        parser.add_argument("--site", type=int, action="append", help="a site id (repeatable)")

    def handle(self, *args, site: list[int] | None, **options):
        if site:
            missing = sorted(
                set(site) - set(Site.objects.filter(id__in=site).values_list("id", flat=True))
            )
            if missing:
                raise CommandError(f"No site with id {', '.join(map(str, missing))}.")
        marked = site_days_invalidate(site_ids=site)
        self.stdout.write(f"{marked} stored site days marked; the next rollup refresh stores them")
