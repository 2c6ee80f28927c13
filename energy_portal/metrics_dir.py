"""The folder where every portal process keeps its Prometheus metrics (multiprocess mode).

Whoever starts all the processes empties it first (`make run`: energy_portal/run.py; compose:
the one-shot `migrate` service, with `python -m energy_portal.metrics_dir`), so values of
processes of an earlier run are not added to this run's. This module imports nothing of
prometheus_client: it runs before the processes that use it.
"""

import os
import sys
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def wipe(path: Path) -> None:
    """Make `path` an empty folder for the metrics files (kept itself: it may be a volume)."""
    path.mkdir(parents=True, exist_ok=True)
    for item in path.glob("*.db"):
        item.unlink()


def main() -> int:
    raw = os.environ.get(VARIABLE, "").strip()
    if not raw:
        print(f"{VARIABLE} is not set: no metrics folder to empty", file=sys.stderr)
        return 0
    wipe(Path(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
