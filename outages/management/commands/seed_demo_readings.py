import json
from pathlib import Path

from django.core.management.base import BaseCommand

from outages.demo import demo_readings_seed
from telemetry.demo_history import HISTORY_DAYS, demo_counters


class Command(BaseCommand):
    help = (
        "Give the demo devices (after seed_demo and seed_demo_outages) 90 days of readings, or "
        "the gap since their last reading, and bring rollups current (idempotent)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days", type=int, default=HISTORY_DAYS, help="how far back a device's past starts"
        )
        parser.add_argument(
            "--tokens-file",
            type=Path,
            help="The simulated fleet's file (seed_demo --tokens-file): each device's energy "
            "counters as last stored are added to it, for its live counters to go on from.",
        )

    def handle(self, *args, days: int = HISTORY_DAYS, tokens_file: Path | None = None, **options):
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
        if tokens_file:
            fleet = json.loads(tokens_file.read_text())
            for uid, counters in demo_counters().items():
                if isinstance(fleet.get(uid), dict):
                    fleet[uid]["counters"] = counters
            tokens_file.write_text(json.dumps(fleet, indent=2))
