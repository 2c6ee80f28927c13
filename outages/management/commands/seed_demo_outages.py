from django.core.management.base import BaseCommand

from outages.demo import demo_credit_policy_ensure, demo_history_seed


class Command(BaseCommand):
    help = (
        "Give the demo (after seed_demo) a default credit policy that pays within minutes and a "
        "few past outages at its sites (idempotent)."
    )

    def handle(self, *args, **options):
        policy, is_default = demo_credit_policy_ensure()
        role = "the default" if is_default else "available (another policy is the default)"
        self.stdout.write(f"  credit policy {policy.name!r} is {role}")
        seeded = demo_history_seed()
        if seeded:
            self.stdout.write(f"  past outages seeded for: {', '.join(seeded)}")
        else:
            self.stdout.write("  past outages: the demo sites already have a history")
