from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from devices.models import Site
from telemetry.iots_config import IotsConfigError
from telemetry.polling import iots_import


class Command(BaseCommand):
    help = (
        "Import an iots-right.json file as a poll source of a site: creates or updates its "
        "devices, sensors, polled appliances and beat schedule. A file with any problem is "
        "refused whole, each problem named by its JSON path."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="the iots-right.json file")
        parser.add_argument("--site", required=True, help="the site's id or exact name")
        parser.add_argument("--name", default="main", help="name of the poll source (main)")

    def handle(self, *args, path: Path, site: str, name: str, **options):
        target = _site(site)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}") from None
        try:
            report = iots_import(site=target, name=name, data=data)
        except IotsConfigError as exc:
            for json_path, problem in exc.problems:
                self.stderr.write(f"{json_path}: {problem}")
            raise CommandError(
                f"{path} refused ({len(exc.problems)} problem(s) above); nothing was imported. "
                "Fix the file and run the command again."
            ) from None
        for line in report.created:
            self.stdout.write(f"created {line}")
        for line in report.updated:
            self.stdout.write(f"updated {line}")
        for line in report.removed:
            self.stdout.write(line)
        source = report.source
        summary = (
            f"{path}: source {source.name!r} of site {target.name!r} (id {target.pk}) has "
            f"{source.appliances.count()} appliance(s), polled every {source.monitoring_period_s} s"
        )
        if not report.changed:
            summary += "; nothing changed"
        self.stdout.write(self.style.SUCCESS(summary))


def _site(wanted: str) -> Site:
    if wanted.isdecimal():
        site = Site.objects.filter(pk=int(wanted)).first()
        if site is None:
            raise CommandError(f"No site has id {wanted}.")
        return site
    sites = list(Site.objects.filter(name=wanted))
    if not sites:
        raise CommandError(f"No site is named {wanted!r}; give its exact name or its id.")
    if len(sites) > 1:
        ids = ", ".join(str(site.pk) for site in sites)
        raise CommandError(f"Several sites are named {wanted!r} (ids {ids}); give the id.")
    return sites[0]
