"""Health of the platform's moving parts, for `/api/v1/health/`."""

import time

from django.conf import settings
from django.db import connection

from energy_portal.redis_client import sync_client
from telemetry.services import INGEST_STREAM

BEAT_KEY = "ep:beat:last-run"


def beat_heartbeat_record() -> None:
    sync_client().set(BEAT_KEY, f"{time.time():.3f}")


def _database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # any failure to reach the database is what we report
        return {"ok": False, "error": str(exc).strip()[:300]}


def _redis() -> dict:
    try:
        sync_client().ping()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:300]}


def _beat(redis_ok: bool) -> dict:
    if not redis_ok:
        return {"ok": False, "error": "Redis unreachable"}
    raw = sync_client().get(BEAT_KEY)
    if raw is None:
        # Beat has not run yet (a fresh start): report it, but it is not a failure.
        return {"ok": True, "last_run": None, "age_s": None}
    age = time.time() - float(raw)
    ok = age <= settings.BEAT_STALE_AFTER
    result = {"ok": ok, "last_run": float(raw), "age_s": round(age, 1)}
    if not ok:
        result["error"] = f"no beat run for {age:.0f} s (limit {settings.BEAT_STALE_AFTER} s)"
    return result


def _ingest(redis_ok: bool) -> dict:
    """Readings waiting in the buffer for the writer, and how old the oldest one is.

    Writers delete what they have committed, so the stream holds only what is not written yet.
    """
    if not redis_ok:
        return {"ok": False, "error": "Redis unreachable"}
    client = sync_client()
    waiting = client.xlen(INGEST_STREAM)
    oldest = client.xrange(INGEST_STREAM, count=1)
    lag_s = 0.0
    if oldest:
        lag_s = max(0.0, time.time() - int(oldest[0][0].split(b"-")[0]) / 1000)
    result = {
        "ok": lag_s <= settings.INGEST_LAG_LIMIT,
        "entries": waiting,
        "lag_s": round(lag_s, 1),
    }
    if not result["ok"]:
        result["error"] = (
            f"oldest unwritten reading waited {lag_s:.0f} s (limit {settings.INGEST_LAG_LIMIT} s);"
            " is the ingest writer running?"
        )
    return result


def health_report() -> dict:
    """Check each dependency; `healthy` is true only when all of them are."""
    checks = {"database": _database(), "redis": _redis()}
    checks["ingest_buffer"] = _ingest(checks["redis"]["ok"])
    checks["beat"] = _beat(checks["redis"]["ok"])
    return {"healthy": all(check["ok"] for check in checks.values()), "checks": checks}
