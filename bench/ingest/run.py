"""Driver of the ingestion benchmark (on demand; not part of the test suite).

    python -m bench.ingest.run [--rows 1000000] [--prefill 10000000] [--skip-prefill] [--quick]
        [--pipelines daphne:1:1,daphne:1:2] [--profile] [--wait-quiet]

Phases: the table empty, then with `--prefill` rows already in it (raw COPY, progress shown). In
each phase, on the same table and the same kind of rows (1,000 sensors x time steps):
(a) baselines: raw binary COPY (the ceiling), COPY into a staging table + INSERT ... ON CONFLICT
DO NOTHING (the ceiling with duplicate-dropping), one INSERT per reading in autocommit (on a sample,
extrapolated); diagnostics: the writer's own SQL statement alone, raw COPY with triggers off;
(b) the writer alone: the Redis stream pre-filled with `--rows` rows, then 1 and 2
`run_ingest_writer` processes, timed until the stream is empty (every batch committed);
(c) the whole pipeline: the portal's ASGI server + writers, concurrent HTTP clients POSTing
batches to /api/v1/ingest/ for `--duration` s, until the stream drains.
Then (d) `.sgl_v2` parse-and-enqueue of a generated `--sgl-records` file. Optional (e) py-spy
profiles of the server and the writers under load.

Prints a table with ratios to the duplicate-dropping ceiling and writes everything to
var/bench-ingest-<timestamp>.json (+ .txt). See bench/ingest/README.md.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import common as shared
from bench.common import log
from bench.ingest import common, procs
from bench.ingest.rows import RowSet

STREAM = "ep:ingest"  # telemetry.services.INGEST_STREAM (checked at start)
GROUP = "writers"  # telemetry.writer.GROUP
PYSPY_RATE = 100


# -- helpers --------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


class Bench:
    def __init__(self, args, data: dict):
        import psycopg
        import redis

        self.args = args
        self.data = data
        self.sensor_ids = [s["id"] for s in data["sensors"]]
        self.public_ids = [s["public_id"] for s in data["sensors"]]
        self.conn = psycopg.connect(common.psycopg_url(), autocommit=True)
        self.db_name = self.conn.info.dbname
        self.redis = redis.Redis.from_url(common.redis_url())
        self.redis_pid = self.redis.info("server").get("process_id")
        from bench.ingest.baselines import sensor_type

        self.sensor_type = sensor_type(self.conn)
        self.sensor_sql_type = {"int8": "bigint", "int4": "integer"}[self.sensor_type]
        # Time axis: one step per second from 3 days ago (the API refuses readings more than 400
        # days old or more than 10 min ahead). Steps [0, prefill steps) are the pre-fill; every
        # measurement then takes fresh steps after it, so no two measurements share a key.
        self.base_us = (int(time.time()) - 3 * 86_400) * 1_000_000
        self.prefill_steps = args.prefill // len(self.sensor_ids)
        self.next_step = self.prefill_steps
        self.prefilled = False
        self.env = common.portal_env()
        common.LOG_DIR.mkdir(parents=True, exist_ok=True)

    # -- table state --------------------------------------------------------------------------

    def rows(self, n: int) -> RowSet:
        steps = max(1, n // len(self.sensor_ids))
        rs = RowSet(self.sensor_ids, self.base_us, self.next_step, steps)
        self.next_step += steps
        return rs

    def reset(self) -> None:
        """The table as the phase wants it before a measurement: empty, or exactly the pre-fill
        (later rows deleted and vacuumed away). Rollup marks cleared (the refresh job would),
        Redis DB flushed, and a CHECKPOINT so no checkpoint from the last write lands inside."""
        c = self.conn
        if self.prefilled:
            end = self.base_us + self.prefill_steps * 1_000_000
            c.execute(
                "DELETE FROM energy_readings WHERE time >= to_timestamp(%s::double precision)",
                [end / 1e6],
            )
            c.execute("VACUUM energy_readings")
        else:
            c.execute("TRUNCATE energy_readings")
        c.execute("TRUNCATE rollup_dirty") if self._has_table("rollup_dirty") else None
        c.execute("CHECKPOINT")
        self.redis.flushdb()

    def _has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]

    def count_range(self, rs_start_us: int) -> int:
        return self.conn.execute(
            "SELECT count(*) FROM energy_readings WHERE time >= to_timestamp(%s::double precision)",
            [rs_start_us / 1e6],
        ).fetchone()[0]

    def table_rows(self) -> int:
        return self.conn.execute("SELECT count(*) FROM energy_readings").fetchone()[0]

    def prefill(self) -> dict:
        from bench.ingest.baselines import _copy

        n = self.prefill_steps * len(self.sensor_ids)
        log(
            f"pre-fill: {n:,} rows by binary COPY (triggers off: the FK check and rollup marks "
            "are not what is measured here), 1M rows a transaction"
        )
        self.conn.execute("TRUNCATE energy_readings")
        started = time.monotonic()
        steps_per_tx = max(1, 1_000_000 // len(self.sensor_ids))
        done = 0
        for first in range(0, self.prefill_steps, steps_per_tx):
            steps = min(steps_per_tx, self.prefill_steps - first)
            rs = RowSet(self.sensor_ids, self.base_us, first, steps)
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute("SET LOCAL session_replication_role = replica")
                _copy(cur, "energy_readings", rs.copy_data(self.sensor_type))
            done += len(rs)
            el = time.monotonic() - started
            log(f"  pre-fill {done:,}/{n:,} rows ({100 * done / n:.0f}%, {done / el:,.0f} rows/s)")
        copy_s = time.monotonic() - started
        log("  VACUUM ANALYZE energy_readings")
        t0 = time.monotonic()
        self.conn.execute("VACUUM (ANALYZE) energy_readings")
        vacuum_s = time.monotonic() - t0
        self.prefilled = True
        size = self.conn.execute(
            "SELECT pg_total_relation_size('energy_readings'), "
            "pg_relation_size('energy_readings'), pg_relation_size('energy_readings_pkey')"
        ).fetchone()
        return {
            "rows": done,
            "seconds": round(copy_s, 1),
            "rows_per_s": round(done / copy_s),
            "vacuum_s": round(vacuum_s, 1),
            "total_mb": round(size[0] / 2**20),
            "heap_mb": round(size[1] / 2**20),
            "pkey_mb": round(size[2] / 2**20),
        }

    # -- (a) baselines ------------------------------------------------------------------------

    def baselines(self) -> dict:
        from bench.ingest import baselines as b

        out = {}
        n = self.args.rows
        meter = procs.CpuMeter(self.db_name, self.redis_pid)

        def measure(name: str, rs: RowSet, fn, arg, note: str = "", **extra) -> None:
            """Reset the table, then time fn(arg) (arg is built before, outside the timing)."""
            self.reset()
            a = meter.snapshot()
            seconds = fn(arg)
            cpu = procs.CpuMeter.cores(a, meter.snapshot())
            landed = self.count_range(rs.start_us)
            out[name] = {
                "rows": len(rs),
                "seconds": round(seconds, 3),
                "rows_per_s": round(len(rs) / seconds),
                "landed": landed,
                "note": note,
                "cpu_cores": cpu,
                **extra,
            }
            ok = "" if landed == len(rs) else f"  (!! {landed:,} rows in the table)"
            log(
                f"  {name:28} {len(rs):>10,} rows {seconds:7.2f}s {len(rs) / seconds:>10,.0f}/s{ok}"
            )

        conn, batch = self.conn, self.args.batch_rows
        rs = self.rows(n)
        measure(
            "copy_raw",
            rs,
            lambda data: b.copy_raw(conn, data),
            rs.copy_data(self.sensor_type),
            "binary COPY, one transaction",
        )
        rs = self.rows(n)
        measure(
            "copy_dedup",
            rs,
            lambda batches: b.copy_dedup(conn, batches, self.sensor_sql_type),
            rs.copy_batches(self.sensor_type, batch),
            f"COPY to temp staging + INSERT … ON CONFLICT DO NOTHING, {batch:,} rows a transaction",
            batch_rows=batch,
        )
        rs = self.rows(self.args.per_row_sample)
        measure(
            "per_row",
            rs,
            lambda r: b.per_row(conn, r),
            rs,
            f"one INSERT per reading, autocommit; sample of {len(rs):,} rows, per-row rate "
            "extrapolated",
            extrapolated=True,
        )
        rs = self.rows(n)
        measure(
            "diag_writer_sql",
            rs,
            lambda r: b.writer_statement(conn, r, batch),
            rs,
            f"the writer's statement alone (one array literal, generate_subscripts, JOIN, ON "
            f"CONFLICT; psycopg, {batch:,} rows a transaction; no Redis, no Python parsing)",
        )
        rs = self.rows(n)
        measure(
            "diag_copy_no_triggers",
            rs,
            lambda data: b.copy_raw(conn, data, triggers=False),
            rs.copy_data(self.sensor_type),
            "raw COPY with session_replication_role = replica: no FK check, no rollup marks",
        )
        out["diag_explain"] = self.explain_writer_statement()
        return out

    def explain_writer_statement(self) -> dict:
        """EXPLAIN ANALYZE of the writer's statement on one batch, with the deferred FK check made
        immediate so its trigger time shows; rolled back."""
        from telemetry.services import _INSERT_ROWS

        self.reset()
        rs = self.rows(self.args.batch_rows)
        try:
            with self.conn.transaction(force_rollback=True):
                self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                plan = self.conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + _INSERT_ROWS,
                    [rs.array_literal()],
                ).fetchone()[0][0]
        except Exception as exc:
            return {"error": repr(exc)}
        triggers = {t["Trigger Name"]: round(t["Time"], 1) for t in plan.get("Triggers", [])}
        return {
            "rows": len(rs),
            "execution_ms": round(plan["Execution Time"], 1),
            "planning_ms": round(plan["Planning Time"], 1),
            "insert_node_ms": round(plan["Plan"]["Actual Total Time"], 1),
            "triggers_ms": triggers,
            "wal_records": plan["Plan"].get("WAL Records"),
            "wal_fpi": plan["Plan"].get("WAL FPI"),
            "wal_mb": round(plan["Plan"].get("WAL Bytes", 0) / 2**20, 1),
            "shared_hit": plan["Plan"].get("Shared Hit Blocks"),
            "shared_read": plan["Plan"].get("Shared Read Blocks"),
            "shared_dirtied": plan["Plan"].get("Shared Dirtied Blocks"),
        }

    # -- (b) writer alone ---------------------------------------------------------------------

    def fill_stream(self, rs: RowSet) -> int:
        entries = 0
        pipe = self.redis.pipeline(transaction=False)
        for fields in rs.stream_entries(self.args.rows_per_entry):
            pipe.xadd(STREAM, fields)
            entries += 1
            if entries % 100 == 0:
                pipe.execute()
        pipe.execute()
        return entries

    def group_info(self) -> dict | None:
        try:
            groups = self.redis.xinfo_groups(STREAM)
        except Exception:
            return None
        for g in groups:
            if g["name"] in (GROUP, GROUP.encode()):
                return g
        return None

    def start_writers(self, n: int, tag: str, *, env=None) -> list:
        writers = []
        for i in range(n):
            name = f"bench-{tag}-w{i}"
            writers.append(
                shared.spawn(
                    procs.writer_command(name, self.args.writer_max_rows, self.args.writer_max_age),
                    env=env or self.env,
                    log_path=common.LOG_DIR / f"{name}.log",
                )
            )
        return writers

    def writer_alone(self, n_writers: int) -> dict:
        self.reset()
        rs = self.rows(self.args.rows)
        t0 = time.monotonic()
        entries = self.fill_stream(rs)
        fill_s = time.monotonic() - t0
        self.conn.execute("CHECKPOINT")
        meter = procs.CpuMeter(self.db_name, self.redis_pid)
        spawned = time.monotonic()
        writers = self.start_writers(n_writers, f"alone{n_writers}")
        meter.track("writers", [w.pid for w in writers])
        deadline = spawned + 60 + len(rs) / 5_000
        started = snap_a = None
        result: dict = {"rows": len(rs), "entries": entries, "fill_s": round(fill_s, 2)}
        try:
            while time.monotonic() < deadline:
                if any(w.poll() is not None for w in writers):
                    raise RuntimeError("a writer exited; see var/bench-ingest/logs/")
                if started is None:
                    g = self.group_info()
                    if g and (g.get("pending", 0) > 0 or (g.get("entries-read") or 0) > 0):
                        started = time.monotonic()
                        snap_a = meter.snapshot()
                    else:
                        time.sleep(0.005)
                        continue
                if self.redis.xlen(STREAM) == 0:
                    break
                time.sleep(0.01)
            else:
                raise RuntimeError(f"stream not drained within {deadline - spawned:.0f}s")
            done = time.monotonic()
            snap_b = meter.snapshot()
            seconds = done - started
            result.update(
                seconds=round(seconds, 3),
                rows_per_s=round(len(rs) / seconds),
                startup_s=round(started - spawned, 2),
                with_startup_rows_per_s=round(len(rs) / (done - spawned)),
                cpu_cores=procs.CpuMeter.cores(snap_a, snap_b),
                note=f"{n_writers} run_ingest_writer process(es), --max-rows "
                f"{self.args.writer_max_rows} --max-age {self.args.writer_max_age}; timed from the "
                "first read to an empty stream (all acked after commit)",
            )
        except Exception as exc:
            result["error"] = repr(exc)
            log(f"  writer alone x{n_writers}: {exc}")
        finally:
            for w in writers:
                shared.stop(w)
        result["landed"] = self.count_range(rs.start_us)
        if "rows_per_s" in result:
            ok = "" if result["landed"] == len(rs) else f"  (!! {result['landed']:,} in table)"
            log(
                f"  {'writer x' + str(n_writers):28} "
                f"{len(rs):>10,} rows "
                f"{result['seconds']:7.2f}s {result['rows_per_s']:>10,}/s{ok}"
            )
        return result

    # -- (c) the whole pipeline ---------------------------------------------------------------

    def pipeline(
        self,
        server: str,
        server_procs: int,
        n_writers: int,
        opts: str = "",
        *,
        duration: float,
        profile: bool = False,
    ) -> dict:
        """opts: "", "core" or "pubsub" (that channel layer instead of the portal's default)."""
        label = f"{server}x{server_procs}+{n_writers}w" + (f"-{opts}" if opts else "")
        env = dict(self.env)
        layer = opts or None
        if layer:
            env["CHANNEL_LAYER"] = layer
        self.reset()
        first_step = self.next_step
        commands = procs.server_commands(server, server_procs)
        servers = []
        writers = []
        meter = procs.CpuMeter(self.db_name, self.redis_pid)
        result: dict = {
            "config": label,
            "server": server,
            "server_procs": server_procs,
            "options": opts,
            "channel_layer": layer or f"portal default ({_default_layer()})",
            "writers": n_writers,
            "clients": self.args.clients,
            "batch_items": self.args.batch_items,
            "duration_s": duration,
            "profile": profile,
        }
        try:
            for i, (cmd, _port) in enumerate(commands):
                servers.append(
                    shared.spawn(cmd, env=env, log_path=common.LOG_DIR / f"{label}-server{i}.log")
                )
            for proc, (_cmd, port) in zip(servers, commands, strict=True):
                shared.wait_port(port, proc)
            writers = self.start_writers(n_writers, label, env=env)
            meter.track("server", [s.pid for s in servers])
            meter.track("writers", [w.pid for w in writers])
            urls = [f"http://127.0.0.1:{port}/api/v1/ingest/" for _cmd, port in commands]
            self._warm_up(urls, server_procs)
            self._wait_writers_ready(n_writers)
            plan = {
                "urls": urls,
                "token": self.data["api_token"],
                "public_ids": self.public_ids,
                "clients": self.args.clients,
                "batch_items": self.args.batch_items,
                "duration_s": duration,
                "base_us": self.base_us,
                "first_step": first_step,
            }
            with tempfile.TemporaryDirectory() as tmp:
                loadgen, out_path = shared.start_loadgen("bench.ingest.loadgen", plan, Path(tmp))
                meter.track("loadgen", [loadgen.pid])
                load_t0 = time.monotonic()
                samples, snaps, spies = self._follow_load(
                    loadgen, load_t0, duration, meter, servers, writers, label, profile
                )
                load = json.loads(out_path.read_text()) if out_path.exists() else None
            if load is None:
                raise RuntimeError("load generator wrote no result")
            self.next_step = max(self.next_step, load["last_step"])
            drained_at, backlog = self._drain(load_t0, samples, writers)
            result.update(
                self._pipeline_figures(load, samples, snaps, load_t0, drained_at, backlog, duration)
            )
            if spies:
                result["profiles"] = spies
        except Exception as exc:
            result["error"] = repr(exc)
            log(f"  pipeline {label}: {exc}")
        finally:
            for p in writers + servers:
                code = shared.stop(p)
                if code not in (0, -15, None) and p in servers:
                    result.setdefault("exit_codes", []).append(code)
        landed = self.count_range(RowSet(self.sensor_ids, self.base_us, first_step, 1).start_us)
        result["landed_in_table"] = landed
        accepted = result.get("accepted_total")
        if accepted is not None:
            result["lost_or_doubled"] = landed - accepted
            ok = "" if landed == accepted else f"  (!! table has {landed:,})"
            log(
                f"  {'pipeline ' + label:28} accepted {result['accepted_per_s']:>9,}/s, landed "
                f"{result['landed_per_s']:>9,}/s sustained, end to end "
                f"{result['end_to_end_per_s']:>9,}/s; p50/p95 "
                f"{result['latency_ms']['p50']}/{result['latency_ms']['p95']} ms{ok}"
            )
        return result

    def _warm_up(self, urls: list[str], server_procs: int) -> None:
        """Empty POSTs: the first request of a process loads URLconf, DRF, auth."""
        import httpx

        headers = {"Authorization": f"Token {self.data['api_token']}"}
        for url in urls:
            for _ in range(4 * server_procs):
                r = httpx.post(url, json=[], headers=headers, timeout=30)
                if r.status_code != 202:
                    raise RuntimeError(f"warm-up POST {url}: {r.status_code} {r.text[:300]}")

    def _wait_writers_ready(self, n: int, timeout: float = 60) -> None:
        """Until n connections of our Redis DB have XREADGROUP as their last command (a consumer
        that has only blocked is not listed by XINFO GROUPS on Redis 7.0)."""
        db = str(self.redis.connection_pool.connection_kwargs.get("db", 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readers = [
                c
                for c in self.redis.client_list()
                if c.get("cmd") == "xreadgroup" and str(c.get("db")) == db
            ]
            if len(readers) >= n:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{n} writers did not start reading the stream within {timeout}s")

    def _stream_state(self) -> tuple[int, int]:
        info = self.redis.xinfo_stream(STREAM)
        return info.get("entries-added", 0), info.get("length", 0)

    def _follow_load(self, loadgen, load_t0, duration, meter, servers, writers, label, profile):
        """Sample the stream every 0.25 s while the load runs; CPU at warm-up end and load end;
        py-spy on the server(s) and writers during the steady part when profiling."""
        samples = []  # (t since load start, entries added, stream length)
        snaps = {}
        spies = {}
        spy_procs = []
        warmup = self.args.warmup
        deadline = load_t0 + duration + 60
        while loadgen.poll() is None:
            now = time.monotonic()
            if now > deadline:
                log("  load generator over its time budget; stopping it")
                shared.stop(loadgen)
                break
            t = now - load_t0
            try:
                added, length = self._stream_state()
            except Exception:
                added, length = 0, 0
            samples.append((t, added, length))
            if "warm" not in snaps and t >= warmup:
                snaps["warm"] = meter.snapshot()
                if profile:
                    seconds = max(3, duration - warmup - 2)
                    targets = [(f"server{i}", s.pid) for i, s in enumerate(servers)]
                    targets += [(f"writer{i}", w.pid) for i, w in enumerate(writers)]
                    for name, pid in targets:
                        out = common.WORK / f"profile-{label}-{name}.txt"
                        spy = procs.pyspy_start(pid, out, seconds, PYSPY_RATE)
                        spy_procs.append((name, out, spy, seconds))
            if "end" not in snaps and t >= duration:
                snaps["end"] = meter.snapshot()
            time.sleep(0.25)
        snaps.setdefault("end", meter.snapshot())
        for name, out, spy, seconds in spy_procs:
            try:
                _o, err = spy.communicate(timeout=60)
            except Exception:
                shared.stop(spy)
                err = b"timeout"
            spies[name] = {
                "raw": str(out.relative_to(common.ROOT)),
                "rc": spy.returncode,
                "seconds": seconds,
                "rate": PYSPY_RATE,
                "stderr": (err or b"").decode(errors="replace")[-300:],
            }
        return samples, snaps, spies

    def _drain(self, load_t0, samples, writers) -> tuple[float | None, int]:
        deadline = time.monotonic() + self.args.drain_timeout
        while time.monotonic() < deadline:
            added, length = self._stream_state()
            samples.append((time.monotonic() - load_t0, added, length))
            if length == 0:
                return time.monotonic() - load_t0, 0
            if any(w.poll() is not None for w in writers):
                raise RuntimeError("a writer exited; see var/bench-ingest/logs/")
            time.sleep(0.05)
        log(
            f"  stream not drained {self.args.drain_timeout:.0f}s after the load; "
            f"{length} entries left"
        )
        return None, length

    def _pipeline_figures(self, load, samples, snaps, load_t0, drained_at, backlog, duration):
        records = load["records"]  # [t0, t1, status, accepted, rejected, error]
        warmup = self.args.warmup
        ok = [r for r in records if r[2] == 202]
        accepted_total = sum(r[3] for r in ok)
        rejected_total = sum(r[4] for r in records)
        end = max((r[1] for r in records), default=duration)
        in_window = [r for r in ok if warmup <= r[1] <= duration]
        window = max(1e-6, min(duration, end) - warmup)
        lat = [1000 * (r[1] - r[0]) for r in records if r[1] >= warmup and r[2] == 202]
        rows_per_entry = statistics.mean(load["items_per_batch"]) if load["items_per_batch"] else 0

        def landed_at(t: float) -> float:
            """Rows committed by time t: entries added minus entries still in the stream."""
            best = None
            for s in samples:
                if s[0] <= t:
                    best = s
            if best is None:
                return 0.0
            return (best[1] - best[2]) * rows_per_entry

        landed_window = landed_at(duration) - landed_at(warmup)
        errors = {}
        for r in records:
            if r[2] != 202:
                key = f"{r[2]} {r[5][:80]}"
                errors[key] = errors.get(key, 0) + 1
        max_backlog = max((s[2] for s in samples), default=0) * rows_per_entry
        out = {
            "requests": len(records),
            "requests_ok": len(ok),
            "accepted_total": accepted_total,
            "rejected_total": rejected_total,
            "http_errors": errors,
            "accepted_per_s": round(sum(r[3] for r in in_window) / window),
            "landed_per_s": round(landed_window / window),
            "end_to_end_per_s": round(accepted_total / drained_at) if drained_at else None,
            "end_to_end_s": round(drained_at, 2) if drained_at else None,
            "drain_after_load_s": round(drained_at - end, 2) if drained_at else None,
            "undrained_entries": backlog,
            "max_backlog_rows": round(max_backlog),
            "window_s": [warmup, round(min(duration, end), 2)],
            "latency_ms": {
                "p50": round(percentile(lat, 50), 1) if lat else None,
                "p95": round(percentile(lat, 95), 1) if lat else None,
                "p99": round(percentile(lat, 99), 1) if lat else None,
                "max": round(max(lat), 1) if lat else None,
            },
            "items_per_batch": load["items_per_batch"],
            "landed_curve": [
                [round(t, 2), round((a - n) * rows_per_entry), round(n * rows_per_entry)]
                for t, a, n in samples[:: max(1, len(samples) // 60)]
            ],
        }
        if "warm" in snaps and "end" in snaps:
            out["cpu_cores"] = procs.CpuMeter.cores(snaps["warm"], snaps["end"])
        return out

    # -- (d) .sgl_v2 ----------------------------------------------------------------------------

    def sgl(self) -> dict:
        from bench.ingest import sgl

        self.redis.flushdb()
        cpes = self.data["cpes"]
        t0 = time.monotonic()
        data, info = sgl.make_file(cpes, self.args.sgl_records)
        info["generate_s"] = round(time.monotonic() - t0, 2)
        log(
            f"(d) .sgl_v2: {info['records']:,} records, {len(cpes)} CPEs, "
            f"{info['bytes'] / 2**20:.0f} MiB"
        )
        warm, _ = sgl.make_file(cpes[:10], 2_000)
        sgl.run(
            source_id=self.data["ftp_source_id"],
            data=warm,
            redis_client=self.redis,
            stream=STREAM,
            instrument=False,
        )
        runs = []
        for i in range(self.args.sgl_repeat):
            r = sgl.run(
                source_id=self.data["ftp_source_id"],
                data=data,
                redis_client=self.redis,
                stream=STREAM,
                instrument=False,
            )
            runs.append(r)
            log(
                f"  ftp_file_ingest #{i + 1}: {r['rows']:,} records in {r['seconds']:.2f}s = "
                f"{r['records_per_s']:,} records/s ({r['status']})"
            )
        staged = sgl.run(
            source_id=self.data["ftp_source_id"],
            data=data,
            redis_client=self.redis,
            stream=STREAM,
            instrument=True,
        )
        log(
            f"  instrumented run: {staged['seconds']:.2f}s; stages: "
            + ", ".join(f"{k.strip()} {v:.2f}s" for k, v in staged["stages_s"].items())
        )
        best = max(runs, key=lambda r: r["records_per_s"] or 0)
        out = {
            "file": info,
            "runs": runs,
            "records_per_s": best["records_per_s"],
            "median_records_per_s": round(statistics.median(r["records_per_s"] for r in runs)),
            "instrumented": staged,
        }
        if self.args.profile:
            out["cprofile"] = self._sgl_cprofile(data)
        self.redis.flushdb()
        return out

    def _sgl_cprofile(self, data: bytes) -> str:
        import cProfile
        import io
        import pstats

        from bench.ingest import sgl

        prof = cProfile.Profile()
        prof.enable()
        sgl.run(
            source_id=self.data["ftp_source_id"],
            data=data,
            redis_client=self.redis,
            stream=STREAM,
            instrument=False,
        )
        prof.disable()
        path = common.WORK / "profile-sgl.txt"
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
        path.write_text(buf.getvalue())
        return str(path.relative_to(common.ROOT))

    # -- a phase --------------------------------------------------------------------------------

    def phase(self, name: str, pipelines: list[tuple[str, int, int]]) -> dict:
        out: dict = {}
        log(f"== phase '{name}': (a) baselines, {self.args.rows:,} rows each")
        out["baselines"] = self.baselines()
        out["writer_alone"] = {}
        for n in self.args.writers:
            log(
                f"== phase '{name}': (b) writer alone, {n} process(es), "
                f"{self.args.rows:,} rows pre-filled in the stream"
            )
            out["writer_alone"][str(n)] = self.writer_alone(n)
        out["pipeline"] = {}
        for server, sp, nw, opts in pipelines:
            log(
                f"== phase '{name}': (c) pipeline {server} x{sp} + {nw} writer(s) {opts}, "
                f"{self.args.clients} clients x {self.args.batch_items} items, "
                f"{self.args.duration:.0f}s"
            )
            r = self.pipeline(server, sp, nw, opts, duration=self.args.duration)
            out["pipeline"][r["config"]] = r
        out["table_rows_after"] = self.table_rows() if not self.prefilled else None
        return out


# -- report ---------------------------------------------------------------------------------------


def _not_ours(cpu: dict) -> float:
    """CPU (cores) of other people's work: processes not listed, other databases' sessions."""
    return sum(
        v
        for k, v in cpu.items()
        if k.startswith("others")
        or "other databases" in k
        or "other dbs" in k
        or k.startswith("postgres (other:")  # older result files
    )


def _fmt_rate(v) -> str:
    return f"{v:,.0f}" if isinstance(v, int | float) else "—"


def report(results: dict) -> str:
    out = []
    targets = results["targets"]
    for phase_name, ph in results["phases"].items():
        base = ph["baselines"]
        ceiling = base.get("copy_dedup", {}).get("rows_per_s")
        raw = base.get("copy_raw", {}).get("rows_per_s")
        out.append("")
        title = {"empty": "empty table"}.get(phase_name, phase_name)
        out.append(
            f"Phase: {title}"
            + (
                f" ({results['prefill']['rows']:,} rows pre-filled)"
                if phase_name != "empty" and results.get("prefill")
                else ""
            )
        )
        out.append(
            f"{'measurement':44}{'rows':>11}{'seconds':>9}{'rows/s':>11}{'x dedup':>9}"
            f"{'x raw':>7}  cores: pg / python / machine / not ours"
        )

        def line(
            name,
            r,
            rate_key="rows_per_s",
            rows_key="rows",
            seconds_key="seconds",
            ceiling=ceiling,
            raw=raw,
        ):
            rate = r.get(rate_key)
            cpu = r.get("cpu_cores") or {}
            pg = cpu.get("postgres (bench db backends)")
            py = sum(v for k, v in cpu.items() if k in ("server", "writers", "driver"))
            cores = (
                f"{pg or 0:.2f} / {py:.2f} / {cpu.get('machine (all processes)', 0):.2f} / "
                f"{_not_ours(cpu):.2f}"
                if cpu
                else ""
            )
            x = f"{rate / ceiling:.2f}" if rate and ceiling else "—"
            xr = f"{rate / raw:.2f}" if rate and raw else "—"
            secs = r.get(seconds_key)
            out.append(
                f"{name:44}{r.get(rows_key, 0):>11,}"
                f"{secs if secs is not None else '—':>9}{_fmt_rate(rate):>11}{x:>9}{xr:>7}"
                f"  {cores}" + (f"  ERROR {r['error'][:60]}" if r.get("error") else "")
            )

        line("raw COPY (ceiling)", base.get("copy_raw", {}))
        line("COPY staging + ON CONFLICT (dedup ceiling)", base.get("copy_dedup", {}))
        line("INSERT per reading, autocommit (extrap.)", base.get("per_row", {}))
        line("  diag: writer's statement alone", base.get("diag_writer_sql", {}))
        line("  diag: raw COPY, triggers off (no FK)", base.get("diag_copy_no_triggers", {}))
        for n, r in ph.get("writer_alone", {}).items():
            line(f"writer alone, {n} process(es)", r)
        for cfg, r in ph.get("pipeline", {}).items():
            line(
                f"pipeline {cfg}: accepted (HTTP 202)",
                r,
                "accepted_per_s",
                "accepted_total",
                "end_to_end_s",
            )
            line(
                f"pipeline {cfg}: landed, sustained",
                r,
                "landed_per_s",
                "accepted_total",
                "end_to_end_s",
            )
            line(
                f"pipeline {cfg}: end to end (until drained)",
                r,
                "end_to_end_per_s",
                "accepted_total",
                "end_to_end_s",
            )
        ex = base.get("diag_explain") or {}
        if ex.get("triggers_ms"):
            out.append(
                f"  EXPLAIN ANALYZE of one writer batch ({ex['rows']:,} rows): "
                f"{ex['execution_ms']} ms, of which insert {ex['insert_node_ms']} ms, "
                + ", ".join(f"{k} {v} ms" for k, v in ex["triggers_ms"].items())
            )
        for cfg, r in ph.get("pipeline", {}).items():
            if r.get("error"):
                continue
            lat = r["latency_ms"]
            out.append(
                f"  pipeline {cfg}: {r['requests_ok']}/{r['requests']} requests 202, "
                f"{r['clients']} clients x {r['items_per_batch'][0]} items; "
                "latency p50/p95/p99/max "
                f"{lat['p50']}/{lat['p95']}/{lat['p99']}/{lat['max']} ms; drained "
                f"{r['drain_after_load_s']}s after the load; max backlog "
                f"{r['max_backlog_rows']:,} rows; table - accepted = {r.get('lost_or_doubled')}"
            )
            cpu = r.get("cpu_cores") or {}
            out.append(
                "    CPU (cores) during the steady window: "
                + ", ".join(f"{k} {v}" for k, v in cpu.items())
            )
    s = results.get("sgl")
    if s:
        out.append("")
        st = s["instrumented"]
        out.append(
            f".sgl_v2 parse-and-enqueue (ftp_file_ingest, {s['file']['records']:,} records, "
            f"{s['file']['cpes']} CPEs, {s['file']['bytes'] / 2**20:.0f} MiB): "
            f"best {s['records_per_s']:,} records/s, median {s['median_records_per_s']:,} "
            f"of {len(s['runs'])} runs"
        )
        out.append(f"  where the time goes (instrumented run, {st['seconds']:.2f}s):")
        for k, v in st.get("stages_s", {}).items():
            out.append(f"    {k:64}{v:7.2f}s {100 * v / st['seconds']:5.1f}%")
    for config, prof in (results.get("profiles") or {}).items():
        out.append("")
        out.append(
            f"Profile of pipeline {config} under load (py-spy {PYSPY_RATE} Hz, "
            f"var/bench-ingest/profile-{config}-*.txt): % of a thread's samples"
        )
        if prof.get("error"):
            out.append(f"  ERROR {prof['error']}")
        for name, sm in (prof.get("summaries") or {}).items():
            out.append(f"  {name}: CPU ≈ {sm.get('cpu_cores', '?')} core")
            for tname, t in (sm.get("threads") or {}).items():
                if t["samples"] < 0.1 * sm["samples"]:
                    continue
                out.append(
                    f"   {tname}: CPU {t['cpu_pct_of_samples']}%, "
                    + ", ".join(f"{k} {v}%" for k, v in t.get("waits_pct", {}).items())
                )
                for k, v in t.get("stages_pct", {}).items():
                    out.append(f"      {v:5.1f}%  {k}")
                out.append(
                    "      CPU by library: "
                    + ", ".join(f"{k} {v}%" for k, v in t.get("cpu_by_library_pct", {}).items())
                )
                out.append(
                    "      CPU by portal function: "
                    + ", ".join(
                        f"{k.split(' (')[0]} {v}%"
                        for k, v in list(t.get("cpu_by_portal_function_pct", {}).items())[:7]
                    )
                )
    out.append("")
    out.append("Targets")
    for t in targets:
        out.append(f"  {t['what']}: {t['value']} -> {'MET' if t['met'] else 'MISSED'}")
    return "\n".join(out)


def evaluate_targets(results: dict) -> list[dict]:
    out = []
    for phase_name, ph in results["phases"].items():
        ceiling = ph["baselines"].get("copy_dedup", {}).get("rows_per_s")
        pipes = [p for p in ph.get("pipeline", {}).values() if not p.get("error")]
        if not pipes:
            continue
        best = max(pipes, key=lambda p: min(p["landed_per_s"], p["end_to_end_per_s"] or 0))
        sustained = min(best["accepted_per_s"], best["landed_per_s"])
        e2e = best["end_to_end_per_s"] or 0
        out.append(
            {
                "what": f"[{phase_name}] whole pipeline ≥ 100,000 readings/s sustained "
                f"(best config {best['config']}: min(accepted, landed) in the window; "
                f"end to end {e2e:,}/s)",
                "value": f"{sustained:,}/s",
                "met": sustained >= 100_000 and e2e >= 100_000,
            }
        )
        if ceiling:
            out.append(
                {
                    "what": f"[{phase_name}] pipeline ≥ 60% of the dedup ceiling ({ceiling:,}/s)",
                    "value": f"{sustained / ceiling:.0%} (end to end {e2e / ceiling:.0%})",
                    "met": sustained >= 0.6 * ceiling and e2e >= 0.6 * ceiling,
                }
            )
    s = results.get("sgl")
    if s:
        out.append(
            {
                "what": ".sgl_v2 parse-and-enqueue ≥ 100,000 records/s (median of runs)",
                "value": f"{s['median_records_per_s']:,}/s",
                "met": s["median_records_per_s"] >= 100_000,
            }
        )
    return out


# -- main -----------------------------------------------------------------------------------------


def _default_layer() -> str:
    from django.conf import settings

    backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    return "pubsub" if "pubsub" in backend.lower() else "core"


def _git_state() -> dict:
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=common.ROOT, capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_files": changed}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _pipelines(text: str) -> list[tuple[str, int, int, str]]:
    out = []
    for spec in text.split(","):
        if not spec.strip():
            continue
        server, procs_, writers, *opts = spec.strip().split(":")
        layer = opts[0] if opts else ""
        if len(opts) > 1 or layer not in ("", "core", "pubsub"):
            raise argparse.ArgumentTypeError(f"{spec!r}: server:processes:writers[:core|pubsub]")
        out.append((server, int(procs_), int(writers), layer))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, help="rows per baseline / writer measurement (1M)")
    parser.add_argument("--prefill", type=int, help="rows already in the table, phase 2 (10M)")
    parser.add_argument("--skip-prefill", action="store_true", help="only the empty-table phase")
    parser.add_argument("--skip-empty", action="store_true", help="only the pre-filled phase")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test (~3 min)")
    parser.add_argument("--per-row-sample", type=int, help="rows for the per-INSERT baseline")
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=20_000,
        help="rows a transaction for the dedup baseline and the writer-SQL "
        "diagnostic (the writer's default --max-rows)",
    )
    parser.add_argument(
        "--rows-per-entry",
        type=int,
        default=500,
        help="rows per stream entry when pre-filling for the writer alone",
    )
    parser.add_argument(
        "--writers",
        type=_ints,
        default=[1, 2],
        help="writer-alone runs: processes each (1,2)",
    )
    parser.add_argument("--writer-max-rows", type=int, default=20_000)
    parser.add_argument("--writer-max-age", type=float, default=0.5)
    parser.add_argument(
        "--pipelines",
        type=_pipelines,
        default=None,
        help="server:processes:writers[:core|pubsub],... (default daphne:1:1,daphne:1:2)",
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch-items", type=int, default=5000)
    parser.add_argument("--duration", type=float, help="seconds of HTTP load (25)")
    parser.add_argument("--warmup", type=float, default=3, help="first seconds not counted")
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--sgl-records", type=int, help="records in the .sgl_v2 file (1M)")
    parser.add_argument("--sgl-repeat", type=int, default=3)
    parser.add_argument("--skip-sgl", action="store_true")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="extra pipeline run with py-spy on the server and the writers, and "
        "cProfile of the .sgl_v2 ingest",
    )
    parser.add_argument(
        "--profile-pipeline",
        type=_pipelines,
        default=None,
        help="configs to profile, as --pipelines (default: the first of --pipelines)",
    )
    parser.add_argument(
        "--wait-quiet",
        action="store_true",
        help="first wait (polling every 60 s, ≤ --wait-minutes) for 1-min load < 1.0",
    )
    parser.add_argument("--wait-minutes", type=float, default=30)
    parser.add_argument("--database-url", help=f"default {common.DEFAULT_DATABASE_URL}")
    parser.add_argument("--redis-url", help=f"default {common.DEFAULT_REDIS_URL}")
    parser.add_argument("--report", metavar="JSON", help="only print the report of a results file")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    q = args.quick
    args.rows = args.rows or (100_000 if q else 1_000_000)
    args.prefill = args.prefill if args.prefill is not None else (1_000_000 if q else 10_000_000)
    args.per_row_sample = args.per_row_sample or (2_000 if q else 20_000)
    args.duration = args.duration or (8 if q else 25)
    args.sgl_records = args.sgl_records or (100_000 if q else 1_000_000)
    args.pipelines = args.pipelines or (
        [("daphne", 1, 1, "")] if q else [("daphne", 1, 1, ""), ("daphne", 1, 2, "")]
    )
    common.set_urls(args.database_url, args.redis_url)

    shared.stop_children_on_exit()

    quiet = shared.wait_quiet(args.wait_minutes * 60, 1.0) if args.wait_quiet else "not waited for"
    log(f"start: {quiet}; load average {Path('/proc/loadavg').read_text().strip()}")
    from bench.ingest import setup_data

    data = setup_data.ensure()  # also sets Django up in this process
    from telemetry import services, writer

    if services.INGEST_STREAM != STREAM or writer.GROUP != GROUP:
        raise SystemExit("the ingest stream or group name changed; update bench/ingest/run.py")
    bench = Bench(args, data)
    started = time.strftime("%Y%m%d-%H%M%S")
    results: dict = {
        "started": started,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "python": sys.version.split()[0],
            "postgres": bench.conn.execute("SHOW server_version").fetchone()[0],
            "postgres_settings": dict(
                bench.conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', "
                    "'synchronous_commit', 'max_wal_size', 'wal_level', 'fsync', 'work_mem')"
                ).fetchall()
            ),
        },
        "portal": _git_state(),
        "quiet": quiet,
        "args": {k: v for k, v in vars(args).items()},
        "data_set": {
            "sensors": len(bench.sensor_ids),
            "devices": data["devices"],
            "sensor_id_type": bench.sensor_type,
            "database": bench.db_name,
            "redis": common.redis_url(),
        },
        "phases": {},
    }
    out_path = common.VAR / f"bench-ingest-{started}.json"

    def save():
        results["targets"] = evaluate_targets(results)
        out_path.write_text(json.dumps(results, indent=1, default=str))

    try:
        if not args.skip_empty:
            results["phases"]["empty"] = bench.phase("empty", args.pipelines)
            save()
        if not args.skip_prefill and args.prefill > 0:
            results["prefill"] = bench.prefill()
            log(f"  pre-filled {results['prefill']}")
            results["phases"][f"prefilled {args.prefill:,}"] = bench.phase(
                f"prefilled {args.prefill:,}", args.pipelines
            )
            save()
        if not args.skip_sgl:
            results["sgl"] = bench.sgl()
            save()
        if args.profile:
            from bench.ingest import profile as prof

            results["profiles"] = {}
            for server, sp, nw, opts in args.profile_pipeline or args.pipelines[:1]:
                log(
                    f"== profile: pipeline {server} x{sp} + {nw} writer(s) {opts} with py-spy "
                    f"({'table pre-filled' if bench.prefilled else 'empty table'})"
                )
                r = bench.pipeline(server, sp, nw, opts, duration=args.duration, profile=True)
                r["summaries"] = {
                    name: prof.summarise(common.ROOT / p["raw"], name, p["seconds"], p["rate"])
                    for name, p in (r.get("profiles") or {}).items()
                    if (common.ROOT / p["raw"]).exists()
                }
                results["profiles"][r["config"]] = r
                save()
    finally:
        # Leave nothing behind: the 10M rows are made again by the next run anyway.
        bench.conn.execute("TRUNCATE energy_readings")
        bench.redis.flushdb()
        results["finished"] = time.strftime("%Y%m%d-%H%M%S")
        results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
        save()
    text = report(results)
    print(text)
    (common.VAR / f"bench-ingest-{started}.txt").write_text(text + "\n")
    log(f"results: {out_path.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
