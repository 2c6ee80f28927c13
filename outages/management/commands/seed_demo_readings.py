from django.core.management.base import BaseCommand

from outages.demo import demo_readings_seed
from telemetry.demo_history import HISTORY_DAYS


class Command(BaseCommand):
    help = (
        "Give the demo devices (after seed_demo and seed_demo_outages) 90 days of readings, or "
        "the gap since their last reading, and bring rollups current (idempotent)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days", type=int, default=HISTORY_DAYS, help="how far back a device's past starts"
        )

    def handle(self, *args, days: int = HISTORY_DAYS, **options):
        def progress(phase: str, done: int, total: int) -> None:
            if phase == "readings":
                line = f"  demo history: {done:,} of {total:,} readings ({done / total:.0%})"
            else:
                line = f"  demo history: rolling up, {done:,} quarter-hours"
            self.stdout.write(f"\r{line}\033[K", ending="")
            self.stdout.flush()

        result = demo_readings_seed(progress=progress, days=days)
        self.stdout.write(
            f"\r  demo history: {result.readings:,} new readings for {result.sensors} sensors, "
            f"{result.buckets:,} quarter-hours rolled up in {result.seconds:.1f} s\033[K"
        )
