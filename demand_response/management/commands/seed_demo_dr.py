from django.core.management.base import BaseCommand

from demand_response.demo import demo_program_ensure


class Command(BaseCommand):
    help = (
        "Give the demo (after seed_demo) a demand-response program open to its feeders with a "
        "minute's notice, and its sites' auto-responses (idempotent)."
    )

    def handle(self, *args, **options):
        program, created = demo_program_ensure()
        state = "created" if created else "already there"
        self.stdout.write(
            f"  demand-response program {program.name!r} (id {program.pk}) {state}: "
            f"{program.reward_per_kwh} {program.currency}/kWh, "
            f"{int(program.notification_lead_time.total_seconds() // 60)} min notice"
        )
