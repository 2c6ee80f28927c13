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
// dies. This server frames whole messages first and only then hands them over.
//
// What PGlite is, and what follows for this server:
// - One PostgreSQL backend in single-user mode: one session at a time. Connections are served
//   one after the other; the others wait in a queue (and are refused after --queue-timeout).
//   Between two clients the session is reset (Sync, ROLLBACK, DISCARD ALL).
// - The backend is bound to one database when the instance starts, and ignores the database
//   named in the startup packet. So the data lives in a directory (a temporary one unless
//   --data-dir is given) and, when a client asks for another database than the open one, the
//   instance is closed and reopened on that database (about a second).
// - COPY ... FROM STDIN aborts the WASM instance: it is refused with SQLSTATE 0A000 before it
//   reaches PostgreSQL. Should the instance die anyway, the client gets a FATAL error and the
//   instance is restarted from the data directory (PostgreSQL's crash recovery).
// - Any user name and password are accepted; the session always runs as superuser "postgres".
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

/** One backend message: type byte, int32 length, body. */
function backendMessage(type, body) {
  const out = Buffer.alloc(5 + body.length)
  out[0] = type.charCodeAt(0)
  out.writeInt32BE(4 + body.length, 1)
  body.copy(out, 5)
  return out
}

/** A frontend message of the same shape (what a client would send). */
const frontendMessage = backendMessage

const cstr = (text) => Buffer.from(`${text}\0`, 'utf8')

/** ErrorResponse with severity, SQLSTATE and message. */
function errorResponse(severity, code, message) {
  return backendMessage(
    'E',
    Buffer.concat([
      cstr(`S${severity}`),
      cstr(`V${severity}`),
      cstr(`C${code}`),
      cstr(`M${message}`),
      Buffer.from([0]),
    ]),
  )
}

const query = (sql) => frontendMessage('Q', cstr(sql))

// PGlite starts PostgreSQL with search_path=pg_catalog and client_min_messages=debug3 on its
// command line (and ignores per-role settings), so every session gets PostgreSQL's defaults
// back as session settings. A client's own RESET ALL / DISCARD ALL returns to PGlite's values.
const SESSION_DEFAULTS = 'SET search_path TO "$user", public; SET client_min_messages TO notice'
const SYNC = frontendMessage('S', Buffer.alloc(0))

/** Startup packet parameters (user, database, options...). */
function startupParams(packet) {
  const params = {}
  const fields = packet.subarray(8).toString('utf8').split('\0')
  for (let i = 0; i + 1 < fields.length && fields[i] !== ''; i += 2) {
    params[fields[i]] = fields[i + 1]
  }
  return params
}

/**
 * Walk the backend messages PGlite answered: drop the DEBUG notices that its command line
 * (client_min_messages=debug3) makes it send, and note the last ReadyForQuery status.
 */
function filterBackendOutput(data) {
  // A copy: PGlite reuses the buffer behind `data` for its next answer, and socket.write()
  // may still hold on to what it was given.
  const buf = Buffer.from(data)
  const keep = []
  let status = null
  let dropped = false
  let offset = 0
  while (offset + 5 <= buf.length) {
    const type = buf[offset]
    const length = buf.readInt32BE(offset + 1)
    const end = offset + 1 + length
    if (length < 4 || end > buf.length) break
    if (type === 0x5a /* Z */) status = String.fromCharCode(buf[offset + 5])
    if (type === 0x4e /* N */ && isDebugNotice(buf, offset + 5, end)) {
      dropped = true
    } else {
      keep.push(buf.subarray(offset, end))
    }
    offset = end
  }
  if (offset < buf.length) keep.push(buf.subarray(offset)) // never seen; pass through as is
  return { output: dropped ? Buffer.concat(keep) : buf, status }
}

function isDebugNotice(buf, start, end) {
  let i = start
  while (i < end && buf[i] !== 0) {
    const field = buf[i]
    const stop = buf.indexOf(0, i + 1)
    if (stop < 0 || stop >= end) return false
    if (field === 0x56 /* V: non-localized severity */ || field === 0x53 /* S */) {
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

function refuseCopyFromStdin(message) {
  const type = String.fromCharCode(message[0])
  if (type === 'Q') {
    const sql = message.toString('utf8', 5, message.length - 1)
    if (isCopyFromStdin(sql)) return query(COPY_REFUSAL)
  } else if (type === 'P') {
    const nameEnd = message.indexOf(0, 5)
    const sqlEnd = message.indexOf(0, nameEnd + 1)
    if (nameEnd < 0 || sqlEnd < 0) return message
    const sql = message.toString('utf8', nameEnd + 1, sqlEnd)
    if (isCopyFromStdin(sql)) {
      return frontendMessage(
        'P',
        Buffer.concat([
          message.subarray(5, nameEnd + 1),
          cstr(COPY_REFUSAL),
          message.subarray(sqlEnd + 1),
        ]),
      )
    }
  }
  return message
}

/** Bytes received but not yet framed; framing needs no copy until a message is complete. */
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
    let out
    if (this.chunks[0].length >= n) {
      out = this.chunks[0].subarray(0, n)
    } else {
      const all = Buffer.concat(this.chunks, this.length)
      out = all.subarray(0, n)
      this.chunks = [all]
    }
    const rest = this.chunks[0].subarray(n)
    if (rest.length) this.chunks[0] = rest
    else this.chunks.shift()
    this.length -= n
    return out
  }
}

// ---------------------------------------------------------------------------------------------
// The PGlite instance: one database open at a time, every call to it serialized.

class Engine {
  db = null
  database = null
  #tail = Promise.resolve()

  constructor(dataDir) {
    this.dataDir = dataDir
  }

  /** Run fn after everything queued before it; fn's errors go to the caller only. */
  serial(fn) {
    const run = this.#tail.then(fn)
    this.#tail = run.catch(() => {})
    return run
  }

  async open(database) {
    const started = Date.now()
    if (this.db) await this.close()
    this.db = await this.#create(database)
    // Right after initdb the session stays in template1 whatever was asked: open it again.
    const { rows } = await this.db.query('SELECT current_database() AS name')
    if (rows[0].name !== database) {
      await this.db.close()
      this.db = await this.#create(database)
    }
    this.database = database
    await this.db.exec(SESSION_DEFAULTS)
    debug(`opened database ${database} in ${Date.now() - started} ms`)
  }

  #create(database) {
    return PGlite.create({ dataDir: this.dataDir, database, extensions: { timescaledb } })
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

  /** After a crash: a new instance on the same data directory (PostgreSQL recovers from WAL). */
  async restart() {
    const database = this.database ?? 'postgres'
    this.db = null // the dead instance is not closed: its WASM state is gone
    this.database = null
    log(`restarting PGlite on database ${database}`)
    await this.open(database)
  }

  /** Pass framed frontend messages to PostgreSQL; its raw answer. */
  async exec(messages) {
    return await this.db.execProtocolRaw(messages)
  }

  /** pg_database row of a database, or null. */
  async databaseInfo(name) {
    const result = await this.db.query(
      'SELECT datallowconn FROM pg_database WHERE datname = $1',
      [name],
    )
    return result.rows[0] ?? null
  }

  /** Leave the session as a new connection expects it: no transaction, no session state. */
  async resetSession() {
    let status = null
    for (const message of [
      SYNC,
      query('ROLLBACK'),
      query('DISCARD ALL'),
      query(SESSION_DEFAULTS),
    ]) {
      status = filterBackendOutput(await this.exec(message)).status
    }
    if (status !== 'I') throw new Error(`session reset left status ${status}`)
  }
}

// ---------------------------------------------------------------------------------------------
// Connections: startup negotiation at once, then one session at a time.

class Connection {
  static nextId = 1

  constructor(socket, server) {
    this.id = Connection.nextId++
    this.socket = socket
    this.server = server
    this.input = new ByteQueue()
    this.phase = 'startup' // startup -> queued -> active -> closed
    this.startupPacket = null
    this.params = {}
    this.closed = false
    this.status = 'I'
    this.queueTimer = null
    socket.setNoDelay(true)
    socket.on('data', (chunk) => this.onData(chunk))
    socket.on('error', (err) => debug(`#${this.id} socket error: ${err.message}`))
    socket.on('close', () => this.onClose())
  }

  write(data) {
    if (!this.closed && this.socket.writable && data.length) this.socket.write(data)
  }

  fatal(code, message) {
    this.write(errorResponse('FATAL', code, message))
    this.socket.end()
  }

  onData(chunk) {
    this.input.push(chunk)
    if (this.phase === 'startup') this.readStartup()
    else if (this.phase === 'active') this.readMessages()
    // queued: keep the bytes until the session starts
  }

  onClose() {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.queueTimer)
    debug(`#${this.id} closed in phase ${this.phase}`)
    if (this.phase === 'queued') this.server.dequeue(this)
    else if (this.phase === 'active') this.server.sessionEnded(this)
  }

  /** Packets before the session: 4-byte length, 4-byte code, no type byte. */
  readStartup() {
    while (this.phase === 'startup' && this.input.length >= 8) {
      const head = this.input.peek(8)
      const length = head.readInt32BE(0)
      const code = head.readInt32BE(4)
      if (length < 8 || length > MAX_STARTUP_PACKET) {
        this.fatal('08P01', `invalid startup packet length ${length}`)
        this.phase = 'closed'
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
        this.startupPacket = packet
        this.params = startupParams(packet)
        this.phase = 'queued'
        debug(`#${this.id} startup ${JSON.stringify(this.params)}`)
        this.server.enqueue(this)
      } else {
        this.fatal('0A000', `unsupported frontend protocol ${code >> 16}.${code & 0xffff}`)
        this.phase = 'closed'
      }
    }
  }

  /** The session starts: open the asked-for database if need be, then the startup packet. */
  async activate() {
    clearTimeout(this.queueTimer)
    this.phase = 'active'
    const engine = this.server.engine
    const database = this.params.database || this.params.user || 'postgres'
    try {
      await engine.serial(async () => {
        if (this.closed) return
        if (database !== engine.database) {
          const info = await engine.databaseInfo(database)
          if (!info) {
            this.fatal('3D000', `database "${database}" does not exist`)
            return
          }
          if (!info.datallowconn) {
            this.fatal('55000', `database "${database}" is not currently accepting connections`)
            return
          }
          const previous = engine.database
          try {
            await engine.open(database)
          } catch (err) {
            log(`opening database ${database} failed:`, err?.message ?? err)
            await engine.open(previous)
            this.fatal('XX000', `PGlite could not open database "${database}": ${err?.message}`)
            return
          }
        }
        this.respond(await engine.exec(this.startupPacket))
      })
    } catch (err) {
      await this.crashed(err)
      return
    }
    if (!this.closed && this.phase === 'active') this.readMessages()
  }

  /** Frame whole messages (type byte + 4-byte length) and pass each batch on as one piece. */
  readMessages() {
    const batch = []
    let terminate = false
    while (this.input.length >= 5) {
      const head = this.input.peek(5)
      const length = head.readInt32BE(1)
      if (length < 4 || length > MAX_MESSAGE) {
        this.fatal('08P01', `invalid message length ${length}`)
        terminate = true
        break
      }
      if (this.input.length < 1 + length) break
      const message = this.input.take(1 + length)
      if (message[0] === 0x58 /* X: Terminate */) {
        terminate = true
        break
      }
      batch.push(refuseCopyFromStdin(message))
    }
    if (batch.length) this.send(Buffer.concat(batch))
    if (terminate) {
      this.phase = 'terminating'
      this.socket.end()
      this.server.sessionEnded(this) // the reset queues behind the batch just sent
    }
  }

  send(messages) {
    this.server.engine
      .serial(async () => {
        if (this.phase !== 'active' && this.phase !== 'terminating') return
        this.respond(await this.server.engine.exec(messages))
      })
      .catch((err) => this.crashed(err))
  }

  respond(data) {
    const { output, status } = filterBackendOutput(data)
    if (status) this.status = status
    this.write(output)
  }

  async crashed(err) {
    if (this.phase === 'crashed') return
    this.phase = 'crashed'
    log(`#${this.id}: PGlite failed, restarting it:`, err?.stack ?? err)
    this.fatal('XX000', `PGlite crashed: ${err?.message ?? err}`)
    this.socket.destroy()
    await this.server.recover()
    this.server.sessionEnded(this)
  }
}

class Server {
  queue = []
  active = null
  resetting = Promise.resolve()

  constructor(engine, queueTimeoutMs) {
    this.engine = engine
    this.queueTimeoutMs = queueTimeoutMs
  }

  enqueue(connection) {
    if (this.queueTimeoutMs > 0) {
      connection.queueTimer = setTimeout(() => {
        this.dequeue(connection)
        connection.fatal(
          '53300',
          `the PGlite test server serves one connection at a time and another one was ` +
            `still open after ${this.queueTimeoutMs / 1000} s`,
        )
        connection.phase = 'closed'
      }, this.queueTimeoutMs)
    }
    this.queue.push(connection)
    this.next()
  }

  dequeue(connection) {
    this.queue = this.queue.filter((c) => c !== connection)
  }

  next() {
    if (this.active) return
    const connection = this.queue.shift()
    if (!connection) return
    this.active = connection
    debug(`#${connection.id} active (${this.queue.length} waiting)`)
    connection.activate()
  }

  /** Called once per session (close, Terminate or crash); resets PostgreSQL for the next. */
  sessionEnded(connection) {
    if (this.active !== connection || connection.ended) return
    connection.ended = true
    this.engine
      .serial(() => this.engine.resetSession())
      .catch(async (err) => {
        log('session reset failed, restarting PGlite:', err?.message ?? err)
        await this.recover()
      })
      .finally(() => {
        if (this.active === connection) this.active = null
        this.next()
      })
  }

  async recover() {
    try {
      await this.engine.serial(() => this.engine.restart())
    } catch (err) {
      log('PGlite could not be restarted:', err?.stack ?? err)
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
  for (const c of [server.active, ...server.queue]) c?.socket.destroy()
  try {
    await engine.serial(() => engine.close())
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
