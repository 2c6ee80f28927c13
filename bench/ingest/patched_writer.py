"""`manage.py run_ingest_writer` with the proposed writer change patched in (see patched.py).

python -m bench.ingest.patched_writer --max-rows 20000 --max-age 0.5 --name NAME
"""

import sys

import django


def main() -> None:
    django.setup()
    from bench.ingest.patched import patch_writer

    patch_writer()
    from telemetry.management.commands.run_ingest_writer import Command

    Command().run_from_argv(["manage.py", "run_ingest_writer", *sys.argv[1:]])


if __name__ == "__main__":
    main()
