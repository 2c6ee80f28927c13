import json
from pathlib import Path

from django.core.management.base import BaseCommand

from devices.demo import demo_seed


class Command(BaseCommand):
    help = "Create the demo users, grid, homes and devices (idempotent) and print the logins."

    def add_arguments(self, parser):
        parser.add_argument(
            "--tokens-file",
            type=Path,
            help="Write fresh device tokens and profiles here as JSON, for the simulated fleet "
            "(python -m pi_agent.simulate --tokens FILE).",
        )

    def handle(self, *args, tokens_file: Path | None = None, **options):
        result = demo_seed(rotate_tokens=tokens_file is not None)
        self.stdout.write(self.style.SUCCESS("Demo data ready. Sign in at http://127.0.0.1:8000/"))
        for username, password, role, created in result.users:
            note = "" if created else "  (existing user: password left as it was)"
            self.stdout.write(f"  {role:9} {username:10} password: {password}{note}")
        if tokens_file:
            tokens_file.parent.mkdir(parents=True, exist_ok=True)
            tokens_file.write_text(json.dumps(result.simulated, indent=2))
            tokens_file.chmod(0o600)
            self.stdout.write(f"  device tokens for the simulated devices written to {tokens_file}")
