from django.core.management.base import BaseCommand, CommandError

from outages.demo import DemoOutageError, demo_outage_issue


class Command(BaseCommand):
    help = (
        "Cut the simulated mains of every device on a feeder (the simulate_mains command): a "
        "demo outage. Pis running the simulator obey; real ones reject it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--feeder", required=True, help="feeder code, e.g. FD-101")
        parser.add_argument("--minutes", type=float, default=5.0, help="length of the cut")

    def handle(self, *args, feeder: str, minutes: float, **options):
        try:
            cuts = demo_outage_issue(feeder_code=feeder, minutes=minutes)
        except DemoOutageError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Cutting the mains on {feeder} for {minutes:g} min:")
        for cut in cuts:
            self.stdout.write(
                f"  {cut.device_uid:12} ({cut.site_name}): command {cut.command.id} "
                f"{cut.command.status}, expires {cut.command.expires_at:%Y-%m-%d %H:%M:%S} UTC"
            )
        self.stdout.write(
            "Devices offline now get it when they reconnect, if before it expires; follow the "
            "results with GET /api/v1/commands/<id>/."
        )
