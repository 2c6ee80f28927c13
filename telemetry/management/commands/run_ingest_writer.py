import signal

from django.conf import settings
from django.core.management.base import BaseCommand

from telemetry.writer import Writer


class Command(BaseCommand):
    help = "Write readings from the Redis ingest stream into energy_readings, in batches."

    def add_arguments(self, parser):
        parser.add_argument("--max-rows", type=int, default=20_000, help="rows per batch at most")
        parser.add_argument("--max-age", type=float, default=0.5, help="seconds a batch may wait")
        parser.add_argument("--name", help="consumer name (default host-pid)")

    def handle(self, *args, max_rows: int, max_age: float, name: str | None, **options):
        writer = Writer(
            name=name,
            max_rows=max_rows,
            max_age_s=max_age,
            claim_idle_ms=settings.INGEST_CLAIM_IDLE_MS,
        )
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: writer.stop())
        writer.run()
