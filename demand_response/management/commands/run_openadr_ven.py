"""`manage.py run_openadr_ven`: the portal as an OpenADR 2.0b VEN of the configured VTNs.

One OpenLEADR client per enabled VTN connection (or only `--connection ID`), each restarted with
a growing pause when it fails and when its configuration changes; connections enabled or added
later are picked up within seconds, and with none configured the process waits for one.
SIGTERM or Ctrl-C stops every VEN."""

import asyncio
import signal

from django.core.management.base import BaseCommand, CommandError

from demand_response.models import VtnConnection
from demand_response.openadr import ven


class Command(BaseCommand):
    help = "Run the OpenADR 2.0b VEN of every enabled VTN connection (or of one)."

    def add_arguments(self, parser):
        parser.add_argument("--connection", type=int, help="only this VTN connection's VEN")

    def handle(self, *args, connection=None, **options):
        if connection is not None and not VtnConnection.objects.filter(pk=connection).exists():
            raise CommandError(f"There is no VTN connection {connection}.")
        asyncio.run(self._run(connection))

    async def _run(self, only: int | None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        which = f"connection {only}" if only is not None else "every enabled VTN connection"
        self.stdout.write(f"OpenADR VEN for {which} (SIGTERM stops it)")
        await ven.run_all(stop, only=only)
