#!/usr/bin/env node
// A test-only TimescaleDB on the PostgreSQL wire protocol: PGlite (PostgreSQL 17 compiled to
// WASM) with the TimescaleDB 2.23 extension, served to ordinary clients such as psycopg 3.
//
//   node server.mjs [--port N] [--host H] [--data-dir DIR] [--queue-timeout SECONDS]
//                   [--exit-on-stdin-close] [--debug]
//
// Port 0 (the default) picks a free port. Once it accepts connections it prints one line:
//   READY port=NNNNN host=127.0.0.1 data_dir=/tmp/...
// Environment equivalents: PGLITE_PORT, PGLITE_HOST, PGLITE_DATA_DIR, PGLITE_QUEUE_TIMEOUT,
// PGLITE_DEBUG=1.
//
// Why not @electric-sql/pglite-socket's server: it hands every TCP read to PGlite as it
// arrives. A protocol message split over two reads (anything over ~64 KiB) makes PostgreSQL
// read past the end of its input, which it takes for a lost client, and the WASM instance
// dies. This server frames whole messages first and only hands PGlite complete ones.
//
// PGlite is one PostgreSQL backend (single-user mode), bound at start to one database. So:
// - Connections share that one session, like PgBouncer's transaction pooling onto a single
//   server connection: one client at a time owns the backend, from its first message until
//   PostgreSQL is idle again (ReadyForQuery 'I': the transaction is over). Others wait their
//   turn, and are refused with SQLSTATE 53300 after --queue-timeout seconds (default 60).
//   An open transaction therefore blocks every other connection until it ends.
// - Session state is shared between connections open at the same time: SET, temporary
//   tables, advisory locks, LISTEN, SQL PREPARE and WITH HOLD cursors. Prepared statements of
//   the extended protocol are renamed per connection, so psycopg's `_pg3_N` don't collide.
//   When a connection goes away its open transaction is rolled back and its prepared
//   statements closed; when the last one goes, the session is reset (DISCARD ALL).
// - The database named in the startup packet is honoured by reopening PGlite on it (about a
//   second, data kept in the data directory), which can only happen while no connection is
//   open: a connection to another database waits until the current ones have closed.
// - COPY ... FROM STDIN aborts the WASM instance: it is refused with SQLSTATE 0A000 before it
//   reaches PostgreSQL. COPY ... TO STDOUT works. Should the instance die anyway, every client
//   gets a FATAL error and PGlite restarts from the data directory (PostgreSQL's recovery).
// - Any user name and password are accepted; the session always runs as superuser "postgres".
//   Startup parameters (application_name, TimeZone, options=-c ...) are ignored.
// - No TLS: SSLRequest and GSSENCRequest are answered 'N' (clients need sslmode=disable or
//   prefer). CancelRequest is ignored (a running statement cannot be interrupted).

import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const PROTOCOL_3_0 = 196608
const MAX_STARTUP_PACKET = 10000
const MAX_MESSAGE = 1 << 30

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PGLITE_PORT ?? '0' },
    host: { type: 'string', default: process.env.PGLITE_HOST ?? '127.0.0.1' },
    'data-dir': { type: 'string', default: process.env.PGLITE_DATA_DIR ?? '' },
    'queue-timeout': { type: 'string', default: process.env.PGLITE_QUEUE_TIMEOUT ?? '60' },
    'exit-on-stdin-close': { type: 'boolean', default: false },
    debug: { type: 'boolean', default: process.env.PGLITE_DEBUG === '1' },
  },
})

const log = (...args) => console.error('[pglite-server]', ...args)
const debug = opts.debug ? log : () => {}

// ---------------------------------------------------------------------------------------------
// Protocol helpers

/** A message as both sides frame them after startup: type byte, int32 length, body. */
function message(type, body) {
  const out = Buffer.alloc(5 + body.length)
  out[0] = type.charCodeAt(0)
  out.writeInt32BE(4 + body.length, 1)
  body.copy(out, 5)
  return out
}

const cstr = (text) => Buffer.from(`${text}\0`, 'utf8')
const query = (sql) => message('Q', cstr(sql))
const SYNC = message('S', Buffer.alloc(0))

/** ErrorResponse with severity, SQLSTATE and message. */
function errorResponse(severity, code, text) {
  const fields = [`S${severity}`, `V${severity}`, `C${code}`, `M${text}`].map(cstr)
  return message('E', Buffer.concat([...fields, Buffer.from([0])]))
}

function startupPacket(params) {
  const body = Buffer.concat([
    ...Object.entries(params).map(([key, value]) => cstr(`${key}\0${value}`)),
    Buffer.from([0]),
  ])
  const head = Buffer.alloc(8)
  head.writeInt32BE(8 + body.length, 0)
  head.writeInt32BE(PROTOCOL_3_0, 4)
  return Buffer.concat([head, body])
}

/** Startup packet parameters (user, database, options...). */
function startupParams(packet) {
  const params = {}
  const fields = packet.subarray(8).toString('utf8').split('\0')
  for (let i = 0; i + 1 < fields.length && fields[i] !== ''; i += 2) {
    params[fields[i]] = fields[i + 1]
  }
  return params
}

// PGlite starts PostgreSQL with search_path=pg_catalog and client_min_messages=debug3 on its
// command line (and ignores per-role settings), so the session gets PostgreSQL's defaults
// back as session settings. A client's own RESET ALL / DISCARD ALL returns to PGlite's values.
const SESSION_DEFAULTS = 'SET search_path TO "$user", public; SET client_min_messages TO notice'

/**
 * Walk the backend messages of one PGlite answer: drop DEBUG notices (PGlite's command line
 * asks for them), and tell whether it ends idle, i.e. with ReadyForQuery 'I'.
 */
function backendOutput(data) {
  // A copy: PGlite reuses the buffer behind `data` for its next answer, while socket.write()
  // may still hold on to what it was given.
  const buf = Buffer.from(data)
  const keep = []
  let dropped = false
  let last = null
  let status = null
  let offset = 0
  while (offset + 5 <= buf.length) {
    const type = buf[offset]
    const end = offset + 1 + buf.readInt32BE(offset + 1)
    if (end > buf.length || end < offset + 5) break
    last = type
    if (type === 0x5a /* Z */) status = String.fromCharCode(buf[offset + 5])
    if (type === 0x4e /* N */ && isDebugNotice(buf, offset + 5, end)) dropped = true
    else keep.push(buf.subarray(offset, end))
    offset = end
  }
  if (offset < buf.length) keep.push(buf.subarray(offset)) // never seen; passed on as it is
  return {
    output: dropped ? Buffer.concat(keep) : buf,
    idle: last === 0x5a && status === 'I',
    status,
  }
}

function isDebugNotice(buf, start, end) {
  for (let i = start; i < end && buf[i] !== 0; ) {
    const stop = buf.indexOf(0, i + 1)
    if (stop < 0 || stop >= end) return false
    if (buf[i] === 0x56 /* V */ || buf[i] === 0x53 /* S */) {
      return buf.toString('latin1', i + 1, stop).startsWith('DEBUG')
    }
    i = stop + 1
  }
  return false
}

// COPY ... FROM STDIN aborts the WASM instance ("RuntimeError: unreachable"); such statements
// are swapped for one that fails with a clear error, so PostgreSQL keeps its own transaction
// state right (the failed statement aborts the transaction block as any other error would).
const COPY_FROM_STDIN = /(?:^|;)\s*copy\b[^;]*?\bfrom\s+stdin\b/i
const SQL_COMMENTS = /\/\*[\s\S]*?\*\/|--[^\n]*/g
const isCopyFromStdin = (sql) => COPY_FROM_STDIN.test(sql.replace(SQL_COMMENTS, ' '))
const COPY_REFUSAL =
  "DO $pglite$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', " +
  "MESSAGE = 'COPY FROM STDIN is not supported by the PGlite test server', " +
  "HINT = 'Use INSERT (executemany or multi-row VALUES) instead.'; END $pglite$"

/** Split a message body into its leading NUL-terminated strings and the rest. */
function cstrings(msg, count, start = 5) {
  const strings = []
  let offset = start
  for (let i = 0; i < count; i++) {
    const stop = msg.indexOf(0, offset)
    if (stop < 0) return null
    strings.push(msg.toString('utf8', offset, stop))
    offset = stop + 1
  }
  return { strings, rest: msg.subarray(offset) }
}

/**
 * A client's message as the shared backend must see it: the names of its prepared statements
 * made its own (psycopg names them _pg3_0, _pg3_1... on every connection), and COPY FROM STDIN
 * swapped for an error. Portal names stay: portals end with their transaction, and those
 * that outlive it are SQL cursors (DECLARE ... WITH HOLD), which are named in SQL too.
 */
function rewrite(msg, connection) {
  const own = (name) => (name === '' ? '' : `${connection.prefix}${name}`)
  switch (String.fromCharCode(msg[0])) {
    case 'Q': {
      const sql = msg.toString('utf8', 5, msg.length - 1)
      return isCopyFromStdin(sql) ? query(COPY_REFUSAL) : msg
    }
    case 'P': {
      // Parse: statement name, query, parameter types
      const parts = cstrings(msg, 2)
      if (!parts) return msg
      const [name, sql] = parts.strings
      if (name) connection.statements.add(own(name))
      const text = isCopyFromStdin(sql) ? COPY_REFUSAL : sql
      if (!name && text === sql) return msg
      return message('P', Buffer.concat([cstr(own(name)), cstr(text), parts.rest]))
    }
    case 'B': {
      // Bind: portal name, statement name, parameters
      const parts = cstrings(msg, 2)
      if (!parts || !parts.strings[1]) return msg
      const [portal, statement] = parts.strings
      return message('B', Buffer.concat([cstr(portal), cstr(own(statement)), parts.rest]))
    }
    case 'D':
    case 'C': {
      // Describe / Close: 'S' (statement) or 'P' (portal), then a name
      if (msg[5] !== 0x53 /* S */) return msg
      const parts = cstrings(msg, 1, 6)
      if (!parts || !parts.strings[0]) return msg
      const name = own(parts.strings[0])
      if (msg[0] === 0x43 /* C */) connection.statements.delete(name)
      return message(String.fromCharCode(msg[0]), Buffer.concat([Buffer.from('S'), cstr(name)]))
    }
    default:
      return msg
  }
}

// PostgreSQL in PGlite reads its input into an 8 KiB buffer and, once the messages in it are
// done, returns without reading more if that buffer ended exactly at a message boundary: the
// rest of a longer input is silently dropped (e.g. 300 Bind+Execute pairs of 32 bytes: 256
// run, the Sync is lost and the client waits forever). So PGlite gets at most CHUNK bytes of
// whole messages per call, or a single longer message (which it reads to its end).
const CHUNK = 4096

function* chunks(messages) {
  let run = []
  let size = 0
  for (const msg of messages) {
    if (run.length && size + msg.length > CHUNK) {
      yield Buffer.concat(run, size)
      run = []
      size = 0
    }
    run.push(msg)
    size += msg.length
  }
  if (run.length) yield Buffer.concat(run, size)
}

/** The type letters of a run of messages, for the debug log. */
function types(buf) {
  let letters = ''
  for (let offset = 0; offset + 5 <= buf.length; offset += 1 + buf.readInt32BE(offset + 1)) {
    letters += String.fromCharCode(buf[offset])
  }
  if (letters.length <= 40) return letters
  return `${letters.slice(0, 12)}...(${letters.length})...${letters.slice(-12)}`
}

/** Bytes received but not yet framed; framing copies only when a message spans reads. */
class ByteQueue {
  chunks = []
  length = 0

  push(chunk) {
    this.chunks.push(chunk)
    this.length += chunk.length
  }

  /** The first n bytes (n <= length) without consuming them. */
  peek(n) {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n)
    return Buffer.concat(this.chunks, this.length).subarray(0, n)
  }

  take(n) {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks, this.length)]
    const out = this.chunks[0].subarray(0, n)
    const rest = this.chunks[0].subarray(n)
    if (rest.length) this.chunks[0] = rest
    else this.chunks.shift()
    this.length -= n
    return out
  }
}

// ---------------------------------------------------------------------------------------------
// The PGlite instance: one database open at a time.

class Engine {
  db = null
  database = null
  greeting = null // AuthenticationOk ... ReadyForQuery, as PGlite answers a new connection

  constructor(dataDir) {
    this.dataDir = dataDir
  }

  #create(database) {
    return PGlite.create({ dataDir: this.dataDir, database, extensions: { timescaledb } })
  }

  async open(database) {
    const started = Date.now()
    await this.close()
    this.db = await this.#create(database)
    // Right after initdb the session stays in template1 whatever was asked: open it again.
    const { rows } = await this.db.query('SELECT current_database() AS name')
    if (rows[0].name !== database) {
      await this.db.close()
      this.db = await this.#create(database)
    }
    this.database = database
    await this.db.exec(SESSION_DEFAULTS)
    // PGlite answers a startup packet with a password request, and the password message
    // with AuthenticationOk, ParameterStatus..., BackendKeyData, ReadyForQuery. Clients get a
    // copy of that answer; the exchange itself is done once, here.
    await this.exec(startupPacket({ user: 'postgres', database }))
    this.greeting = backendOutput(await this.exec(message('p', cstr('x')))).output
    debug(`opened database ${database} in ${Date.now() - started} ms`)
  }

  async close() {
    const db = this.db
    this.db = null
    this.database = null
    if (db && !db.closed) {
      try {
        await db.close()
      } catch (err) {
        log('closing PGlite failed:', err?.message ?? err)
      }
    }
  }

  /** After a crash: a new instance on the same data directory (PostgreSQL recovers). */
  async restart() {
    const database = this.database ?? 'postgres'
    this.db = null // the dead instance is dropped, not closed: its WASM state is gone
    this.database = null
    log(`restarting PGlite on database ${database}`)
    await this.open(database)
  }

  /** Framed frontend messages in (at most CHUNK bytes, or one message), raw answer out. */
  async exec(messages) {
    return await this.db.execProtocolRaw(messages)
  }

  /** A list of messages, chunk by chunk; each answer goes to onAnswer as it comes. */
  async execAll(messages, onAnswer) {
    for (const chunk of chunks(messages)) onAnswer(backendOutput(await this.exec(chunk)), chunk)
  }

  /** pg_database row of a database, or null. */
  async databaseInfo(name) {
    const { rows } = await this.db.query(
      'SELECT datallowconn FROM pg_database WHERE datname = $1',
      [name],
    )
    return rows[0] ?? null
  }

  /** Leave the session as a new connection expects it: no transaction, no session state. */
  async resetSession() {
    let result = null
    for (const msg of [SYNC, query('ROLLBACK'), query('DISCARD ALL'), query(SESSION_DEFAULTS)]) {
      result = backendOutput(await this.exec(msg))
    }
    if (!result.idle) throw new Error(`session reset left status ${result.status}`)
  }
}

// ---------------------------------------------------------------------------------------------
// Connections

class Connection {
  static nextId = 1

  constructor(socket, server) {
    this.id = Connection.nextId++
    this.prefix = `_c${this.id}_`
    this.socket = socket
    this.server = server
    this.input = new ByteQueue()
    this.phase = 'startup' // startup -> waiting (for its database) -> open -> closed
    this.params = {}
    this.database = null
    this.pending = [] // framed messages for the backend
    this.statements = new Set() // its prepared statements, by their name in the backend
    this.since = Date.now() // when it started to wait (admission, or its turn)
    socket.setNoDelay(true)
    socket.on('data', (chunk) => this.onData(chunk))
    socket.on('error', (err) => debug(`#${this.id} socket error: ${err.message}`))
    socket.on('close', () => this.onClose())
  }

  get closed() {
    return this.phase === 'closed'
  }

  write(data) {
    if (!this.closed && this.socket.writable && data.length) this.socket.write(data)
  }

  /** FATAL error, then the connection ends (and the server cleans up after it). */
  fatal(code, text) {
    this.write(errorResponse('FATAL', code, text))
    this.socket.end()
    this.onClose()
  }

  onData(chunk) {
    if (this.closed) return
    this.input.push(chunk)
    if (this.phase === 'startup') this.readStartup()
    else if (this.phase === 'open') this.readMessages()
  }

  onClose() {
    if (this.closed) return
    const phase = this.phase
    this.phase = 'closed'
    debug(`#${this.id} closed (was ${phase})`)
    this.server.disconnected(this, phase)
  }

  /** Packets before the session: int32 length, int32 code, no type byte. */
  readStartup() {
    while (this.phase === 'startup' && this.input.length >= 8) {
      const head = this.input.peek(8)
      const length = head.readInt32BE(0)
      const code = head.readInt32BE(4)
      if (length < 8 || length > MAX_STARTUP_PACKET) {
        this.fatal('08P01', `invalid startup packet length ${length}`)
        return
      }
      if (this.input.length < length) return
      const packet = this.input.take(length)
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
        this.write(Buffer.from('N'))
      } else if (code === CANCEL_REQUEST) {
        this.socket.end() // nothing can interrupt a statement running inside the WASM instance
        this.phase = 'closed'
      } else if (code >> 16 === 3) {
        this.params = startupParams(packet)
        this.database = this.params.database || this.params.user || 'postgres'
        this.phase = 'waiting'
        this.since = Date.now()
        debug(`#${this.id} startup ${JSON.stringify(this.params)}`)
        this.server.admit(this)
      } else {
        this.fatal('0A000', `unsupported frontend protocol ${code >> 16}.${code & 0xffff}`)
      }
    }
  }

  /** The session is open: answer as PostgreSQL would have, then read what came meanwhile. */
  opened(greeting) {
    this.phase = 'open'
    this.write(greeting)
    this.readMessages()
  }

  /** Frame whole messages (type byte + int32 length) for the backend. */
  readMessages() {
    let added = false
    while (this.phase === 'open' && this.input.length >= 5) {
      const length = this.input.peek(5).readInt32BE(1)
      if (length < 4 || length > MAX_MESSAGE) {
        this.fatal('08P01', `invalid message length ${length}`)
        return
      }
      if (this.input.length < 1 + length) break
      const msg = this.input.take(1 + length)
      if (msg[0] === 0x58 /* X: Terminate */) {
        this.socket.end()
        this.onClose()
        break
      }
      this.pending.push(rewrite(msg, this))
      added = true
    }
    if (added) this.server.ready(this)
  }
}

// ---------------------------------------------------------------------------------------------
// The server: who may use the backend next. All PGlite calls happen in pump(), one at a time.

class Server {
  connections = new Set() // open, on engine.database
  admissions = [] // waiting for their database to be opened
  runnable = [] // open, with messages waiting for their turn
  cleanups = [] // closed; their transaction and prepared statements still to be undone
  owner = null // the connection whose transaction (or message sequence) is in progress
  dirty = false // the session was used since the last full reset
  busy = false

  constructor(engine, queueTimeoutMs) {
    this.engine = engine
    this.queueTimeoutMs = queueTimeoutMs
    if (queueTimeoutMs > 0) setInterval(() => this.expire(), 500).unref()
  }

  admit(connection) {
    this.admissions.push(connection)
    this.pump()
  }

  ready(connection) {
    if (connection !== this.owner && !this.runnable.includes(connection)) {
      connection.since = Date.now()
      this.runnable.push(connection)
    }
    this.pump()
  }

  disconnected(connection, phase) {
    this.admissions = this.admissions.filter((c) => c !== connection)
    this.runnable = this.runnable.filter((c) => c !== connection)
    if (phase === 'open') {
      this.connections.delete(connection)
      this.cleanups.push(connection)
    }
    this.pump()
  }

  /** Refuse whoever waited too long, for a database or for the backend. */
  expire() {
    const now = Date.now()
    const seconds = this.queueTimeoutMs / 1000
    for (const c of this.admissions.filter((c) => now - c.since > this.queueTimeoutMs)) {
      c.fatal(
        '53300',
        `the PGlite test server has database "${this.engine.database}" open and can only ` +
          `switch to "${c.database}" once all its connections have closed; waited ${seconds} s`,
      )
    }
    for (const c of this.runnable.filter((c) => now - c.since > this.queueTimeoutMs)) {
      c.fatal(
        '53300',
        `the PGlite test server runs one transaction at a time, and another connection ` +
          `kept it busy (an open transaction or a long statement) for over ${seconds} s`,
      )
    }
  }

  async pump() {
    if (this.busy) return
    this.busy = true
    try {
      while (await this.step()) {
        // keep going while there is work
      }
    } catch (err) {
      await this.crashed(err)
      this.busy = false
      this.pump()
      return
    }
    this.busy = false
  }

  /** Do the next thing that can be done; false when there is nothing. */
  async step() {
    // 1. Undo what closed connections left: the owner's transaction first, the others'
    //    prepared statements when no transaction is in progress.
    const cleanup = this.cleanups.find((c) => c === this.owner) ?? (!this.owner && this.cleanups[0])
    if (cleanup) {
      this.cleanups = this.cleanups.filter((c) => c !== cleanup)
      await this.cleanUp(cleanup)
      return true
    }
    // 2. Everyone left: a fresh session before anyone comes in.
    if (this.connections.size === 0 && this.dirty) {
      this.dirty = false
      await this.engine.resetSession()
      return true
    }
    // 3. Connections to the open database come in at once, even during a transaction.
    const admitted = this.admissions.filter((c) => c.database === this.engine.database)
    if (admitted.length) {
      this.admissions = this.admissions.filter((c) => !admitted.includes(c))
      for (const c of admitted) {
        this.connections.add(c)
        c.opened(this.engine.greeting)
      }
      return true
    }
    // 4. The owner's transaction goes on while it has something to say.
    if (this.owner) {
      if (!this.owner.pending.length) return false
      await this.run(this.owner)
      return true
    }
    // 5. No connection left and one waits for another database: open that one.
    if (this.connections.size === 0 && this.admissions.length) {
      await this.switchTo(this.admissions[0])
      return true
    }
    // 6. The next connection with something to say takes the backend.
    const next = this.runnable.shift()
    if (next) {
      await this.run(next)
      return true
    }
    return false
  }

  async run(connection) {
    const messages = connection.pending
    connection.pending = []
    this.owner = connection
    this.dirty = true
    let idle = false
    await this.engine.execAll(messages, (answer, chunk) => {
      if (opts.debug) {
        debug(`#${connection.id} ${types(chunk)} -> ${types(answer.output)} ${answer.status}`)
      }
      connection.write(answer.output)
      idle = answer.idle
    })
    if (idle && this.owner === connection) {
      this.owner = null
      if (connection.pending.length) this.ready(connection)
    }
  }

  /** Roll back what a closed connection left open and close its prepared statements. */
  async cleanUp(connection) {
    const messages = []
    if (this.owner === connection) messages.push(SYNC, query('ROLLBACK'))
    for (const name of connection.statements) {
      messages.push(message('C', Buffer.concat([Buffer.from('S'), cstr(name)])))
    }
    if (messages.length) {
      messages.push(SYNC)
      let last = null
      await this.engine.execAll(messages, (answer) => {
        last = answer
      })
      if (!last.idle) throw new Error(`cleaning up after #${connection.id}: status ${last.status}`)
    }
    if (this.owner === connection) this.owner = null
  }

  async switchTo(connection) {
    const info = await this.engine.databaseInfo(connection.database)
    if (!info) {
      connection.fatal('3D000', `database "${connection.database}" does not exist`)
      return
    }
    if (!info.datallowconn) {
      const name = connection.database
      connection.fatal('55000', `database "${name}" is not currently accepting connections`)
      return
    }
    const previous = this.engine.database
    try {
      await this.engine.open(connection.database)
    } catch (err) {
      log(`opening database ${connection.database} failed:`, err?.message ?? err)
      await this.engine.open(previous)
      connection.fatal('XX000', `PGlite could not open "${connection.database}": ${err?.message}`)
    }
  }

  /** PGlite died (a WASM abort): drop every connection, start again from the data directory. */
  async crashed(err) {
    log('PGlite failed, restarting it:', err?.stack ?? err)
    const victims = [...this.connections, ...this.cleanups]
    this.connections.clear()
    this.runnable = []
    this.cleanups = []
    this.owner = null
    this.dirty = false
    for (const c of victims) {
      c.phase = 'dropped'
      c.write(errorResponse('FATAL', 'XX000', `PGlite crashed: ${err?.message ?? err}`))
      c.socket.destroy()
    }
    try {
      await this.engine.restart()
    } catch (restartErr) {
      log('PGlite could not be restarted:', restartErr?.stack ?? restartErr)
      process.exit(1)
    }
  }
}

// ---------------------------------------------------------------------------------------------

const ownDataDir = !opts['data-dir']
const dataDir = opts['data-dir'] || mkdtempSync(join(tmpdir(), 'pglite-timescale-'))
const engine = new Engine(dataDir)
await engine.open('postgres')

const server = new Server(engine, Number(opts['queue-timeout']) * 1000)
const listener = createServer((socket) => new Connection(socket, server))

let stopping = false
async function shutdown(code = 0) {
  if (stopping) return
  stopping = true
  listener.close()
  for (const c of [...server.connections, ...server.admissions]) c.socket.destroy()
  try {
    await engine.close()
  } finally {
    if (ownDataDir) rmSync(dataDir, { recursive: true, force: true })
    process.exit(code)
  }
}
process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(0))
process.on('unhandledRejection', (err) => log('unhandled rejection:', err?.stack ?? err))
if (opts['exit-on-stdin-close']) {
  process.stdin.on('end', () => shutdown(0))
  process.stdin.on('close', () => shutdown(0))
  process.stdin.resume()
}

listener.on('error', (err) => {
  log('listen failed:', err.message)
  shutdown(1)
})
listener.listen(Number(opts.port), opts.host, () => {
  const { port } = listener.address()
  console.log(`READY port=${port} host=${opts.host} data_dir=${dataDir}`)
})
