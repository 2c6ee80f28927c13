"""The PGlite TimescaleDB server answers psycopg 3 as a TimescaleDB 2.23 server would.

No Django here: these tests connect with psycopg directly, so they run with or without
pytest-django. The server runs one transaction at a time over a single shared session (see
pglite/server.mjs); the last tests pin down what that means for concurrent connections.
"""

import socket
import struct
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import errors, sql

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _url(server_url: str, database: str) -> str:
    return server_url.replace("/postgres?", f"/{database}?", 1)


@pytest.fixture(scope="module")
def readings_url(timescale_server) -> str:
    """A database of this module's own, with the timescaledb extension."""
    name = f"readings_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(timescale_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _url(timescale_server, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    return url


@pytest.fixture
def readings(readings_url) -> tuple[str, str]:
    """(url, table): a fresh hypertable of 1-day chunks shaped like energy_readings."""
    table = f"readings_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(readings_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (time timestamptz NOT NULL, sensor_id int NOT NULL, "
                "value double precision NOT NULL, PRIMARY KEY (sensor_id, time))"
            ).format(sql.Identifier(table))
        )
        created = conn.execute(
            "SELECT create_hypertable(%s::regclass, by_range('time', interval '1 day'))",
            [table],
        ).fetchone()
        assert created is not None
    return readings_url, table


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return row[0]


def test_timescaledb_extension_is_2_23(timescale_server):
    with psycopg.connect(timescale_server, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        version = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
    assert version is not None
    assert version[0].startswith("2.23")


def test_create_database_then_connect_to_it(timescale_server):
    name = f"created_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(timescale_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute("CREATE TABLE IF NOT EXISTS only_in_postgres (x int)")

    with psycopg.connect(_url(timescale_server, name)) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
        # A database of its own: what was made in `postgres` is not here.
        assert conn.execute("SELECT to_regclass('only_in_postgres')").fetchone() == (None,)
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1), (2)")
        conn.commit()

    with psycopg.connect(_url(timescale_server, name)) as conn:
        assert conn.execute("SELECT sum(x) FROM kept").fetchone() == (3,)

    with psycopg.connect(timescale_server, autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))


def test_unknown_database_is_refused(timescale_server):
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(_url(timescale_server, "no_such_database"))


def test_hypertable_exists(readings):
    url, table = readings
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT h.num_dimensions, d.column_name, d.time_interval "
            "FROM timescaledb_information.hypertables h "
            "JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name) "
            "WHERE h.hypertable_name = %s",
            [table],
        ).fetchone()
    assert row == (1, "time", timedelta(days=1))


def test_inserts_with_parameters_and_a_message_over_64_kib(readings):
    url, table = readings
    ident = sql.Identifier(table)
    rows = [(T0 + timedelta(minutes=m), s, m * 0.5 + s) for m in range(300) for s in (1, 2)]
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {} (time, sensor_id, value) VALUES (%s, %s, %s)").format(
                    ident
                ),
                rows,
            )
        conn.commit()
        assert _count(conn, table) == 600

        # One Query message of over 128 KiB: it arrives over several TCP reads, so this only
        # works because the server frames whole messages before PostgreSQL reads them.
        values = ",".join(
            f"('{(T0 + timedelta(days=3, seconds=i)).isoformat()}', 3, {i}.25)" for i in range(4000)
        )
        statement = sql.SQL("INSERT INTO {} (time, sensor_id, value) VALUES {}").format(
            ident, sql.SQL(values)
        )
        assert len(statement.as_bytes(conn)) > 128 * 1024
        cur = conn.execute(statement)  # no parameters: one simple-protocol Query message
        assert cur.rowcount == 4000
        conn.commit()

        # And a parameter of 200 KiB in a Bind message, back in the DataRow.
        big = "x" * 200_000
        assert conn.execute("SELECT length(%s::text), %s::text", [big, big]).fetchone() == (
            200_000,
            big,
        )
        assert conn.execute(
            sql.SQL("SELECT count(*), sum(value) FROM {} WHERE sensor_id = 3").format(ident)
        ).fetchone() == (4000, sum(i + 0.25 for i in range(4000)))


def test_on_conflict_do_nothing_drops_duplicates(readings):
    url, table = readings
    insert = sql.SQL(
        "INSERT INTO {} (time, sensor_id, value) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
    ).format(sql.Identifier(table))
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(insert, [T0, 1, 1.0]).rowcount == 1
        assert conn.execute(insert, [T0, 1, 99.0]).rowcount == 0
        assert conn.execute(insert, [T0, 2, 2.0]).rowcount == 1
        with pytest.raises(errors.UniqueViolation):
            conn.execute(
                sql.SQL("INSERT INTO {} VALUES (%s, 1, 5.0)").format(sql.Identifier(table)),
                [T0],
            )
        assert _count(conn, table) == 2
        assert conn.execute(
            sql.SQL("SELECT value FROM {} WHERE sensor_id = 1").format(sql.Identifier(table))
        ).fetchone() == (1.0,)


def test_compression_and_retention_policies(readings):
    url, table = readings
    ident = sql.Identifier(table)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.cursor().executemany(
            sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(ident),
            [(T0 + timedelta(hours=h), s, float(h)) for h in range(72) for s in (1, 2)],
        )
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} SET (timescaledb.compress, "
                "timescaledb.compress_segmentby = 'sensor_id', "
                "timescaledb.compress_orderby = 'time DESC')"
            ).format(ident)
        )
        conn.execute("SELECT add_compression_policy(%s, interval '7 days')", [table])
        conn.execute("SELECT add_retention_policy(%s, interval '730 days')", [table])

        jobs = dict(
            conn.execute(
                "SELECT proc_name, config FROM timescaledb_information.jobs "
                "WHERE hypertable_name = %s",
                [table],
            ).fetchall()
        )
        assert jobs["policy_compression"]["compress_after"] == "7 days"
        assert jobs["policy_retention"]["drop_after"] == "730 days"
        assert conn.execute(
            "SELECT compression_enabled, num_chunks FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = %s",
            [table],
        ).fetchone() == (True, 3)
        assert conn.execute(
            "SELECT segmentby_column_index IS NOT NULL FROM "
            "timescaledb_information.compression_settings "
            "WHERE hypertable_name = %s AND attname = 'sensor_id'",
            [table],
        ).fetchone() == (True,)

        # Compression really runs (the policy's job, called by hand: no background workers).
        conn.execute(
            "SELECT compress_chunk(c) FROM show_chunks(%s::regclass, older_than => %s) c",
            [table, T0 + timedelta(days=2)],
        )
        compressed = conn.execute(
            "SELECT count(*) FILTER (WHERE is_compressed), count(*) "
            "FROM timescaledb_information.chunks WHERE hypertable_name = %s",
            [table],
        ).fetchone()
        assert compressed == (2, 3)
        # ...and compressed rows read back the same.
        assert conn.execute(
            sql.SQL("SELECT count(*), sum(value) FROM {}").format(ident)
        ).fetchone() == (144, 2 * sum(range(72)))


def test_time_bucket_aggregates_known_data(readings):
    url, table = readings
    ident = sql.Identifier(table)
    # Every hour for two days, sensor 1 reads h and sensor 2 reads 10*h.
    rows = [(T0 + timedelta(hours=h), 1, float(h)) for h in range(48)]
    rows += [(T0 + timedelta(hours=h), 2, float(10 * h)) for h in range(48)]
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            sql.SQL("INSERT INTO {} VALUES (%s, %s, %s) ON CONFLICT DO NOTHING").format(ident),
            rows,
        )
        result = conn.execute(
            sql.SQL(
                "SELECT time_bucket('1 day', time) AS day, sensor_id, count(*), avg(value), "
                "max(value) FROM {} GROUP BY day, sensor_id ORDER BY day, sensor_id"
            ).format(ident)
        ).fetchall()
    assert [(day.astimezone(UTC), s, n, avg, mx) for day, s, n, avg, mx in result] == [
        (T0, 1, 24, 11.5, 23.0),
        (T0, 2, 24, 115.0, 230.0),
        (T0 + timedelta(days=1), 1, 24, 35.5, 47.0),
        (T0 + timedelta(days=1), 2, 24, 355.0, 470.0),
    ]


def test_copy_to_stdout_works_and_copy_from_stdin_is_refused(readings):
    url, table = readings
    ident = sql.Identifier(table)
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 1, 1.5)").format(ident), [T0])
        with conn.cursor().copy(
            sql.SQL("COPY (SELECT sensor_id, value FROM {}) TO STDOUT").format(ident)
        ) as copy:
            assert list(copy.rows()) == [("1", "1.5")]
        conn.commit()

        # COPY FROM STDIN would abort the WASM PostgreSQL: the server refuses it instead,
        # as an ordinary error that aborts the transaction and leaves the connection usable.
        with (
            pytest.raises(errors.FeatureNotSupported, match="COPY FROM STDIN"),
            conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(ident)) as copy,
        ):
            copy.write_row((T0, 2, 2.0))
        conn.rollback()
        assert _count(conn, table) == 1


def test_an_open_transaction_makes_other_connections_wait_their_turn(readings_url):
    seen: list[tuple] = []
    waited: list[float] = []

    def second_client() -> None:
        with psycopg.connect(readings_url, autocommit=True) as conn:
            started = time.monotonic()
            seen.append(conn.execute("SELECT to_regclass('left_uncommitted')").fetchone())
            waited.append(time.monotonic() - started)

    first = psycopg.connect(readings_url)
    thread = threading.Thread(target=second_client)
    try:
        first.execute("CREATE TABLE left_uncommitted (x int)")  # a transaction, left open
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive(), "the second connection should wait for the transaction"
    finally:
        first.pgconn.finish()  # goes away without COMMIT, as a crashed client would
        first.close()
    thread.join(timeout=30)
    assert waited and waited[0] >= 0.9
    assert seen == [(None,)]  # rolled back for it


def test_idle_connections_take_turns_and_keep_their_own_prepared_statements(readings_url):
    with (
        psycopg.connect(readings_url, autocommit=True) as one,
        psycopg.connect(readings_url, autocommit=True) as two,
    ):
        for i in range(8):
            # prepare=True: both connections name theirs _pg3_0, which the server keeps apart
            assert one.execute("SELECT %s::int * 2", [i], prepare=True).fetchone() == (2 * i,)
            assert two.execute("SELECT %s::text || 'x'", [str(i)], prepare=True).fetchone() == (
                f"{i}x",
            )
        with one.transaction():
            one.execute("CREATE TABLE made_by_one (x int)")
        assert two.execute("SELECT to_regclass('made_by_one') IS NOT NULL").fetchone() == (True,)


def test_the_session_is_reset_once_every_connection_has_gone(readings_url):
    with psycopg.connect(readings_url, autocommit=True) as conn:
        conn.execute("SET TimeZone TO 'Asia/Tokyo'")
        conn.execute("CREATE TEMP TABLE scratch (x int)")
        conn.execute("PREPARE leftover AS SELECT 1")
    with psycopg.connect(readings_url) as conn:
        assert conn.execute(
            "SELECT current_setting('TimeZone'), to_regclass('pg_temp.scratch'), "
            "(SELECT count(*) FROM pg_prepared_statements), current_setting('search_path')"
        ).fetchone() == ("GMT", None, 0, '"$user", public')


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", 4 + len(body)) + body


def _until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """Backend messages up to and including ReadyForQuery."""
    data = b""
    messages: list[tuple[bytes, bytes]] = []
    while True:
        while len(data) >= 5 and len(data) >= 1 + struct.unpack("!i", data[1:5])[0]:
            end = 1 + struct.unpack("!i", data[1:5])[0]
            messages.append((data[:1], data[5:end]))
            data = data[end:]
            if messages[-1][0] == b"Z":
                return messages
        chunk = sock.recv(65536)
        assert chunk, f"server closed the connection after {messages}"
        data += chunk


def test_input_ending_on_pglites_8_kib_read_boundary_is_not_lost(readings_url):
    """256 Bind+Execute pairs of 32 bytes fill PGlite's 8 KiB input buffer exactly; given in one
    piece, PGlite would stop there and drop the Sync after them (the client waits forever)."""
    url = urlsplit(readings_url)
    params = b"user\0postgres\0database\0" + url.path[1:].encode() + b"\0\0"
    assert url.hostname and url.port
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        assert _until_ready(sock)[0] == (b"R", struct.pack("!i", 0))  # AuthenticationOk
        sock.sendall(_message(b"Q", b"CREATE TABLE boundary (x int)\0"))
        _until_ready(sock)

        parse = _message(b"P", b"\0INSERT INTO boundary VALUES ($1)\0\0\0")
        # portal "", statement "", no parameter formats, 1 parameter '12345', no result formats
        bind = _message(b"B", b"\0\0" + struct.pack("!hhi", 0, 1, 5) + b"12345" + b"\0\0")
        execute = _message(b"E", b"\0" + struct.pack("!i", 0))
        assert len(bind) + len(execute) == 32
        sock.sendall(parse + _message(b"S", b""))
        _until_ready(sock)
        sock.sendall((bind + execute) * 256 + _message(b"S", b""))
        answers = _until_ready(sock)
        assert [kind for kind, _ in answers].count(b"C") == 256

        sock.sendall(_message(b"Q", b"SELECT count(*) FROM boundary\0"))
        rows = [body for kind, body in _until_ready(sock) if kind == b"D"]
        assert rows == [struct.pack("!hi", 1, 3) + b"256"]
        sock.sendall(_message(b"X", b""))
