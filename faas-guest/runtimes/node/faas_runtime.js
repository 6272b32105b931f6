#!/usr/bin/env node
// faas Node.js 20 function runtime: runs an unchanged AWS Lambda Node.js
// handler as a faas instance, speaking the guest protocol (DESIGN.md §5,
// faas-core/src/protocol) on fd 3.
//
//   node faas_runtime.js --handler index.handler --code DIR
//
// Node built-ins only, plus an optional native addon (faas_native.node, the
// Rust crate in native/; see README.md). Node cannot pass fds (SCM_RIGHTS)
// by itself; the addon does recvmsg/sendmsg with SCM_RIGHTS and makes and
// checks sealed memfds, so with it bodies over 64 KiB travel as a memfd as
// faas-guest sends them (requests and responses up to 64 MiB). It is loaded
// from $FAAS_NODE_NATIVE, else from faas_native.node next to this file
// (FAAS_NODE_NATIVE=off: never). Without it bodies travel inline only —
// requests up to 64 KiB (what the gateway sends inline), responses and log
// records up to 128 KiB (MAX_INLINE_BODY); beyond that the invocation is
// answered with an Error frame, never a hang.
//
// How fd 3 is read: libuv does not recognise a SOCK_SEQPACKET fd
// (`new net.Socket({ fd: 3 })` throws ERR_INVALID_FD_TYPE) and its stream
// reads use 64 KiB buffers, which would silently truncate larger datagrams.
// Plain read(2)/write(2) through `fs.readSync`/`fs.writeSync` (or the
// addon's recvmsg(2)/sendmsg(2)) keep SEQPACKET semantics exactly: one read
// returns one whole datagram (given a buffer of MAX_DATAGRAM + 1 bytes), one
// write sends one datagram. The runtime blocks in that synchronous read
// between invocations — Lambda's "frozen between invocations" — which also
// keeps the libuv thread pool free (a thread-pool read blocked on fd 3 would
// make process.exit() hang until the gateway closes the channel).
'use strict';

const fs = require('fs');
const path = require('path');

// ---------------------------------------------------------------------------
// Wire format (faas-core/src/protocol/frame.rs)

const GUEST_FD = 3;
const HEADER_LEN = 24;
const MAGIC = Buffer.from('FAAS', 'latin1');
const VERSION = 1;
const MAX_META = 64 * 1024;
const MAX_INLINE_BODY = 128 * 1024;
const MAX_DATAGRAM = HEADER_LEN + MAX_META + MAX_INLINE_BODY;
// DEFAULT_MEMFD_THRESHOLD: with the addon, bodies longer than this are sent
// as a sealed memfd (as faas-guest's Body::new does).
const MEMFD_THRESHOLD = 64 * 1024;
// DecodeLimits::default().max_body: the largest body (inline or memfd) the
// gateway accepts and this runtime accepts from it.
const MAX_BODY = 64 * 1024 * 1024;
const MAX_HEADERS = 256;
const FLAG_MEMFD = 1 << 0;
const FLAG_SNAPSHOT = 1 << 1;
// On Result and Error: the instance takes its next Invoke at once (kept
// alive), no Ready follows.
const FLAG_READY = 1 << 2;
const KNOWN_FLAGS = FLAG_MEMFD | FLAG_SNAPSHOT | FLAG_READY;
/** Flags of every answer: FLAG_READY when kept alive (set in main). */
let answerFlags = 0;

const KIND_READY = 1;
const KIND_INVOKE = 2;
const KIND_RESULT = 3;
const KIND_ERROR = 4;
const KIND_LOG = 5;
const KIND_NAMES = { 1: 'Ready', 2: 'Invoke', 3: 'Result', 4: 'Error', 5: 'Log' };

const STREAM_STDOUT = 1;
const STREAM_STDERR = 2;
const STREAM_LOG = 3;

// Exit codes: as faas-guest (serve.rs) for the channel, 2 for usage/load.
const EXIT_LOAD = 2;
const EXIT_NO_CHANNEL = 70;
const EXIT_PROTOCOL = 71;
// As Lambda's Node.js runtime after an unhandled rejection / exception.
const EXIT_UNHANDLED_REJECTION = 128;
const EXIT_UNCAUGHT_EXCEPTION = 129;

const ZERO_ID = Buffer.alloc(8);
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

class ProtocolError extends Error {}
class PeerClosed extends Error {}

/** A failure to send one frame that the invocation can be answered about. */
class FrameTooLarge extends Error {}

function writeLine(fd, line) {
  try {
    fs.writeSync(fd, line.endsWith('\n') ? line : line + '\n');
  } catch {
    // Nowhere left to report to.
  }
}

function die(code, message) {
  if (message) writeLine(2, `faas-node: ${message}`);
  process.exit(code);
}

// ---------------------------------------------------------------------------
// The native addon (native/, built to faas_native.node): recv/send with
// SCM_RIGHTS and sealed memfds. null when absent: bodies travel inline only.

const NATIVE_FILE = 'faas_native.node';
const NATIVE_API = ['recv', 'send', 'memfdFrom', 'readMemfd', 'close'];
let native = null;

/**
 * Loads the addon: $FAAS_NODE_NATIVE when set (a path; `off` disables it; a
 * path that cannot be loaded exits 2), else faas_native.node next to this
 * file when it exists (one that cannot be loaded is reported on stderr and
 * the runtime goes on inline-only).
 */
function loadNative() {
  const env = process.env.FAAS_NODE_NATIVE;
  if (env === 'off') return null;
  const explicit = env !== undefined && env !== '';
  const file = explicit ? path.resolve(env) : path.join(__dirname, NATIVE_FILE);
  if (!explicit && !existsFile(file)) return null;
  try {
    const m = { exports: {} };
    process.dlopen(m, file);
    const missing = NATIVE_API.filter((f) => typeof m.exports[f] !== 'function');
    if (missing.length) throw new Error(`it lacks ${missing.join(', ')} (not the faas addon?)`);
    return m.exports;
  } catch (e) {
    const msg = String(e && e.message !== undefined ? e.message : e).replace(/\s*\n\s*/g, ' | ');
    if (explicit) return die(EXIT_LOAD, `cannot load the native addon FAAS_NODE_NATIVE=${JSON.stringify(env)}: ${msg}`);
    writeLine(2, `faas-node: ignoring the native addon ${file}: ${msg}; bodies travel inline only`);
    return null;
  }
}

function closeQuietly(fd) {
  if (fd < 0 || !native) return;
  try {
    native.close(fd);
  } catch {
    // Nothing to do about it.
  }
}

let sleepCell = null;
function sleepMs(ms) {
  if (!sleepCell) sleepCell = new Int32Array(new SharedArrayBuffer(4));
  Atomics.wait(sleepCell, 0, 0, ms);
}

/** Sends one datagram on fd 3 with `bodyFd` (≥ 0) as SCM_RIGHTS (blocking; retries EAGAIN/EINTR). */
function sendDatagram(buf, bodyFd = -1) {
  for (let backoff = 1; ;) {
    let n;
    try {
      n = native ? native.send(GUEST_FD, buf, bodyFd) : fs.writeSync(GUEST_FD, buf, 0, buf.length);
    } catch (e) {
      if (e.code === 'EINTR') continue;
      if (e.code === 'EAGAIN' || e.code === 'EWOULDBLOCK') {
        // Only if someone made fd 3 non-blocking: poll.
        sleepMs(backoff);
        backoff = Math.min(backoff * 2, 20);
        continue;
      }
      if (e.code === 'EPIPE' || e.code === 'ECONNRESET' || e.code === 'ENOTCONN') {
        throw new PeerClosed(`the gateway closed the channel (${e.code})`);
      }
      if (e.code === 'EMSGSIZE' || e.code === 'ENOBUFS') {
        throw new FrameTooLarge(`a datagram of ${buf.length} bytes cannot be sent on fd 3 (${e.code})`);
      }
      throw new ProtocolError(native ? `fd ${GUEST_FD}: ${e.message}` : `write fd ${GUEST_FD}: ${e.message}`);
    }
    if (n !== buf.length) throw new ProtocolError(`frame truncated in transit (${n} of ${buf.length} bytes)`);
    return;
  }
}

/** Sends a frame from the encoders below ({ datagram, fd }), then closes its memfd. */
function sendFrame(frame) {
  try {
    sendDatagram(frame.datagram, frame.fd);
  } finally {
    closeQuietly(frame.fd);
  }
}

let recvBuf = null;

/**
 * Receives one datagram from fd 3 (blocking): { data, fd } (fd -1 when none
 * came; always -1 without the addon); null when the gateway closed.
 */
function recvDatagram() {
  if (native) return recvNative();
  if (!recvBuf) recvBuf = Buffer.allocUnsafe(MAX_DATAGRAM + 1);
  for (let backoff = 1; ;) {
    let n;
    try {
      n = fs.readSync(GUEST_FD, recvBuf, 0, recvBuf.length, null);
    } catch (e) {
      if (e.code === 'EINTR') continue;
      if (e.code === 'EAGAIN' || e.code === 'EWOULDBLOCK') {
        sleepMs(backoff);
        backoff = Math.min(backoff * 2, 20);
        continue;
      }
      if (e.code === 'ECONNRESET' || e.code === 'ENOTCONN') return null;
      throw new ProtocolError(`read fd ${GUEST_FD}: ${e.message}`);
    }
    // A zero-length datagram is never sent by a valid peer: closed.
    if (n === 0) return null;
    if (n > MAX_DATAGRAM) throw new ProtocolError('frame truncated in transit (longer than MAX_DATAGRAM)');
    return { data: recvBuf.subarray(0, n), fd: -1 };
  }
}

/** recvDatagram() through the addon's recvmsg(2), which keeps an SCM_RIGHTS fd. */
function recvNative() {
  for (let backoff = 1; ;) {
    let r;
    try {
      r = native.recv(GUEST_FD, MAX_DATAGRAM + 1);
    } catch (e) {
      if (e.code === 'EAGAIN' || e.code === 'EWOULDBLOCK') {
        sleepMs(backoff);
        backoff = Math.min(backoff * 2, 20);
        continue;
      }
      if (e.code === 'ECONNRESET' || e.code === 'ENOTCONN') return null;
      // ERR_FAAS_TRUNCATED, ERR_FAAS_UNEXPECTED_FD (the addon closed the fds), errno errors.
      throw new ProtocolError(String(e.code).startsWith('ERR_FAAS_') ? e.message : `fd ${GUEST_FD}: ${e.message}`);
    }
    if (r.data.length === 0 || r.data.length > MAX_DATAGRAM) {
      closeQuietly(r.fd);
      if (r.data.length === 0) return null;
      throw new ProtocolError('frame truncated in transit (longer than MAX_DATAGRAM)');
    }
    return r;
  }
}

function header(kind, flags, idBuf, metaLen, bodyLen) {
  const h = Buffer.allocUnsafe(HEADER_LEN);
  MAGIC.copy(h, 0);
  h[4] = VERSION;
  h[5] = kind;
  h.writeUInt16LE(flags, 6);
  idBuf.copy(h, 8);
  h.writeUInt32LE(metaLen, 16);
  h.writeUInt32LE(bodyLen, 20);
  return h;
}

/** Length of the longest prefix of `b` (at most `max` bytes) ending on a UTF-8 boundary. */
function utf8Cut(b, max) {
  if (b.length <= max) return b.length;
  let end = max;
  while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
  return end;
}

/** Encodes headers as frame.rs does; throws FrameTooLarge when they do not fit. */
function encodeHeaders(headers) {
  if (headers.length > MAX_HEADERS) {
    throw new FrameTooLarge(`${headers.length} headers (the wire format carries at most ${MAX_HEADERS})`);
  }
  const parts = [Buffer.allocUnsafe(2)];
  parts[0].writeUInt16LE(headers.length, 0);
  let len = 2;
  for (const [name, value] of headers) {
    const k = Buffer.from(name, 'utf8');
    const v = Buffer.from(value, 'utf8');
    if (k.length > 0xffff) throw new FrameTooLarge(`header name of ${k.length} bytes is too long for the wire format`);
    const kl = Buffer.allocUnsafe(2);
    kl.writeUInt16LE(k.length, 0);
    const vl = Buffer.allocUnsafe(4);
    vl.writeUInt32LE(v.length, 0);
    parts.push(kl, k, vl, v);
    len += 6 + k.length + v.length;
    if (len > MAX_META) throw new FrameTooLarge(`response headers exceed the ${MAX_META}-byte metadata limit`);
  }
  return Buffer.concat(parts, len);
}

// The encoders return { datagram, fd }: fd is the sealed memfd carrying the
// body (-1: inline), which sendFrame() passes along and then closes.

/** The largest body this runtime sends: memfds need the addon. */
function maxBody() {
  return native ? MAX_BODY : MAX_INLINE_BODY;
}

/** A frame with a body: inline up to MEMFD_THRESHOLD, else (addon only) as a sealed memfd. */
function frameWithBody(kind, idBuf, meta, body) {
  const flags = kind === KIND_RESULT ? answerFlags : 0;
  if (native && body.length > MEMFD_THRESHOLD) {
    const fd = native.memfdFrom(body);
    return { datagram: Buffer.concat([header(kind, FLAG_MEMFD | flags, idBuf, meta.length, body.length), meta]), fd };
  }
  return { datagram: Buffer.concat([header(kind, flags, idBuf, meta.length, body.length), meta, body]), fd: -1 };
}

/** A body that could not be put into a memfd (the answer becomes an Error). */
class BodyError extends Error {}

function readyFrame() {
  return { datagram: header(KIND_READY, 0, ZERO_ID, 0, 0), fd: -1 };
}

function resultFrame(idBuf, status, headers, body) {
  if (body.length > maxBody()) {
    throw new FrameTooLarge(`response body of ${body.length} bytes`);
  }
  const h = encodeHeaders(headers);
  const meta = Buffer.allocUnsafe(2 + h.length);
  meta.writeUInt16LE(status, 0);
  h.copy(meta, 2);
  if (meta.length > MAX_META) throw new FrameTooLarge(`response headers exceed the ${MAX_META}-byte metadata limit`);
  try {
    return frameWithBody(KIND_RESULT, idBuf, meta, body);
  } catch (e) {
    throw new BodyError(`faas-node: cannot pass the response body of ${body.length} bytes to the gateway: ${e.message}`);
  }
}

function errorFrame(idBuf, status, message) {
  let b = Buffer.from(message, 'utf8');
  b = b.subarray(0, utf8Cut(b, MAX_INLINE_BODY));
  const meta = Buffer.allocUnsafe(2);
  meta.writeUInt16LE(status, 0);
  return { datagram: Buffer.concat([header(KIND_ERROR, answerFlags, idBuf, 2, b.length), meta, b]), fd: -1 };
}

function logFrame(idBuf, stream, bytes) {
  let b = bytes;
  const max = maxBody();
  if (b.length > max) {
    const note = Buffer.from(`... [faas-node: log record truncated, ${b.length} bytes]\n`, 'utf8');
    b = Buffer.concat([b.subarray(0, utf8Cut(b, max - note.length)), note]);
  }
  return frameWithBody(KIND_LOG, idBuf, Buffer.from([stream]), b);
}

/**
 * Decodes one datagram from the gateway (and the fd that came with it, -1 for
 * none), as defensively as frame.rs decode(). Only Invoke is valid towards a
 * guest; anything else is a ProtocolError. Leaves `fd` alone: the body of a
 * memfd frame is read by receiveInvoke().
 */
function decodeInvoke(d, fd = -1) {
  if (d.length < HEADER_LEN) throw new ProtocolError(`frame of ${d.length} bytes is shorter than the 24-byte header`);
  if (d.compare(MAGIC, 0, 4, 0, 4) !== 0) throw new ProtocolError('bad magic');
  if (d[4] !== VERSION) throw new ProtocolError(`unsupported protocol version ${d[4]} (this side speaks ${VERSION})`);
  const kind = d[5];
  if (!KIND_NAMES[kind]) throw new ProtocolError(`unknown frame kind ${kind}`);
  const flags = d.readUInt16LE(6);
  if (flags & ~KNOWN_FLAGS) throw new ProtocolError(`unknown flags 0x${flags.toString(16)}`);
  const metaLen = d.readUInt32LE(16);
  const bodyLen = d.readUInt32LE(20);
  if (metaLen > MAX_META) throw new ProtocolError(`metadata of ${metaLen} bytes exceeds the limit of ${MAX_META}`);
  const memfd = (flags & FLAG_MEMFD) !== 0;
  if (!memfd && bodyLen > MAX_INLINE_BODY) throw new ProtocolError(`inline body of ${bodyLen} bytes exceeds the limit of ${MAX_INLINE_BODY}`);
  // Without the addon a memfd body is answered 413 whatever its size.
  if (memfd && native && bodyLen > MAX_BODY) throw new ProtocolError(`body of ${bodyLen} bytes exceeds the limit of ${MAX_BODY}`);
  const declared = HEADER_LEN + metaLen + (memfd ? 0 : bodyLen);
  if (declared !== d.length) throw new ProtocolError(`header declares ${declared} bytes but the frame has ${d.length}`);
  if (kind !== KIND_INVOKE) {
    throw new ProtocolError(`the gateway sent a ${KIND_NAMES[kind]} frame where a guest expects Invoke`);
  }
  if (flags & FLAG_SNAPSHOT) throw new ProtocolError('malformed Invoke frame: snapshot flag outside Ready');
  // Without the addon read(2) drops any fd, so only the flag is known.
  if (native && memfd && fd < 0) throw new ProtocolError('frame announces a memfd body but carries no fd');
  if (!memfd && fd >= 0) throw new ProtocolError('frame carries an fd it does not announce');
  const idBuf = Buffer.from(d.subarray(8, 16));
  const meta = d.subarray(HEADER_LEN, HEADER_LEN + metaLen);
  let off = 0;
  const take = (n, what) => {
    if (meta.length - off < n) throw new ProtocolError(`malformed Invoke frame: ${what}`);
    const s = meta.subarray(off, off + n);
    off += n;
    return s;
  };
  const str = (b, what) => {
    try {
      return utf8Strict.decode(b);
    } catch {
      throw new ProtocolError(`malformed Invoke frame: ${what} is not UTF-8`);
    }
  };
  const deadline = Number(take(8, 'deadline').readBigUInt64LE(0));
  const traceId = str(take(take(2, 'trace id').readUInt16LE(0), 'trace id'), 'trace id');
  const count = take(2, 'header count').readUInt16LE(0);
  if (count > MAX_HEADERS) throw new ProtocolError('malformed Invoke frame: more than 256 headers');
  const headers = [];
  for (let i = 0; i < count; i++) {
    const k = str(take(take(2, 'header name').readUInt16LE(0), 'header name'), 'header name');
    const v = str(take(take(4, 'header value').readUInt32LE(0), 'header value'), 'header value');
    headers.push([k, v]);
  }
  if (off !== meta.length) throw new ProtocolError('malformed Invoke frame: trailing metadata bytes');
  return {
    idBuf,
    id: idBuf.readBigUInt64LE(0).toString(),
    deadline,
    traceId,
    headers,
    memfd,
    bodyLen,
    // Copied: the receive buffer is reused.
    body: memfd ? null : Buffer.from(d.subarray(HEADER_LEN + metaLen)),
  };
}

/**
 * Receives and decodes the next Invoke; null when the gateway closed the
 * channel. With the addon a memfd body is checked (sealed, size) and read.
 * The received fd is closed on every path.
 */
function receiveInvoke() {
  const r = recvDatagram();
  if (r === null) return null;
  let fd = r.fd;
  try {
    const f = decodeInvoke(r.data, fd);
    if (f.memfd && native) {
      const owned = fd;
      fd = -1; // readMemfd closes it, also on error
      try {
        f.body = native.readMemfd(owned, f.bodyLen);
      } catch (e) {
        throw new ProtocolError(e.message);
      }
    }
    return f;
  } finally {
    closeQuietly(fd);
  }
}

// ---------------------------------------------------------------------------
// Command line and environment

function usage() {
  return 'usage: node faas_runtime.js --handler FILE.EXPORT --code DIR';
}

function parseArgs(argv) {
  const opts = { handler: process.env._HANDLER || '', code: process.env.LAMBDA_TASK_ROOT || '' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(0, eq) : a;
    const value = () => {
      if (eq > 0) return a.slice(eq + 1);
      if (i + 1 >= argv.length) die(EXIT_LOAD, `${name} needs a value\n${usage()}`);
      return argv[++i];
    };
    if (name === '--handler') opts.handler = value();
    else if (name === '--code') opts.code = value();
    else if (a === '-h' || a === '--help') {
      writeLine(1, usage());
      process.exit(0);
    } else die(EXIT_LOAD, `unknown argument ${JSON.stringify(a)}\n${usage()}`);
  }
  if (!opts.handler) die(EXIT_LOAD, `no handler given\n${usage()}`);
  opts.code = path.resolve(opts.code || '.');
  return opts;
}

function reuseMode() {
  const v = process.env.FAAS_REUSE;
  if (v === undefined || v === '' || v === 'per_request') return 'per_request';
  if (v === 'keep_alive') return 'keep_alive';
  return die(EXIT_PROTOCOL, `FAAS_REUSE=${JSON.stringify(v)}: expected per_request or keep_alive`);
}

/** fd 3 must be an inherited socket (SEQPACKET cannot be checked from JS). */
function checkChannel() {
  let st;
  try {
    st = fs.fstatSync(GUEST_FD);
  } catch (e) {
    return die(EXIT_NO_CHANNEL, `fd ${GUEST_FD} is not the guest channel: ${e.code === 'EBADF' ? 'it is not open' : e.message} (run this under a faas node gateway)`);
  }
  if (!st.isSocket()) {
    die(EXIT_NO_CHANNEL, `fd ${GUEST_FD} is not the guest channel: it is not a socket (run this under a faas node gateway)`);
  }
}

const fn = {};

function describeFunction(opts) {
  const env = process.env;
  fn.name = env.FAAS_FUNCTION_NAME || env.AWS_LAMBDA_FUNCTION_NAME || path.basename(opts.handler).split('.')[0];
  fn.version = env.FAAS_FUNCTION_VERSION || env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST';
  fn.memory = env.FAAS_MEMORY_MB || env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '128';
  fn.timeoutMs = Number(env.FAAS_TIMEOUT_MS) || 0;
  const region = env.AWS_REGION || env.AWS_DEFAULT_REGION || 'local';
  fn.arn = `arn:aws:lambda:${region}:000000000000:function:${fn.name}`;
  fn.logGroup = env.AWS_LAMBDA_LOG_GROUP_NAME || `/aws/lambda/${fn.name}`;
  const d = new Date();
  const ymd = `${d.getUTCFullYear()}/${String(d.getUTCMonth() + 1).padStart(2, '0')}/${String(d.getUTCDate()).padStart(2, '0')}`;
  const tag = (process.pid.toString(16) + Date.now().toString(16)).padStart(32, '0').slice(-32);
  fn.logStream = env.AWS_LAMBDA_LOG_STREAM_NAME || `${ymd}/[${fn.version}]${tag}`;
  // What Lambda's environment offers handlers and SDKs (only where unset).
  const defaults = {
    AWS_LAMBDA_FUNCTION_NAME: fn.name,
    AWS_LAMBDA_FUNCTION_VERSION: fn.version,
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE: fn.memory,
    AWS_LAMBDA_LOG_GROUP_NAME: fn.logGroup,
    AWS_LAMBDA_LOG_STREAM_NAME: fn.logStream,
    LAMBDA_TASK_ROOT: opts.code,
    _HANDLER: opts.handler,
  };
  for (const k of Object.keys(defaults)) if (env[k] === undefined) env[k] = defaults[k];
}

// ---------------------------------------------------------------------------
// Loading the handler, as Lambda's runtime (UserFunction.js) does

class LoadError extends Error {
  constructor(type, message) {
    super(message);
    this.errorType = type;
  }
}

function existsFile(p) {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Whether the nearest package.json above `folder` says "type": "module". */
function folderIsModule(folder) {
  for (;;) {
    if (folder.endsWith('/node_modules')) return false;
    const pj = path.join(folder, 'package.json');
    if (existsFile(pj)) {
      try {
        const pkg = JSON.parse(fs.readFileSync(pj, 'utf8'));
        return !!pkg && pkg.type === 'module';
      } catch {
        return false;
      }
    }
    const up = path.dirname(folder);
    if (up === folder) return false;
    folder = up;
  }
}

async function importFile(file) {
  const { pathToFileURL } = require('url');
  return import(pathToFileURL(file).href);
}

async function loadModule(appRoot, moduleRoot, moduleName) {
  const base = path.resolve(appRoot, moduleRoot, moduleName);
  if (existsFile(base)) return require(base); // extensionless
  const js = base + '.js';
  const jsIsModule = existsFile(js) && folderIsModule(path.dirname(js));
  if (existsFile(js) && !jsIsModule) return require(js);
  if (jsIsModule) return importFile(js);
  if (existsFile(base + '.mjs')) return importFile(base + '.mjs');
  if (existsFile(base + '.cjs')) return require(base + '.cjs');
  // Node-style lookup (a package in node_modules, a directory with index.js).
  let resolved;
  try {
    resolved = require.resolve(moduleName, { paths: [path.resolve(appRoot, moduleRoot), appRoot] });
  } catch (e) {
    throw new LoadError('Runtime.ImportModuleError', `Cannot find module '${path.join(moduleRoot, moduleName)}' (tried ${base}{,.js,.mjs,.cjs} and Node's module lookup)`);
  }
  return require(resolved);
}

async function loadHandler(appRoot, handlerString) {
  const baseName = path.basename(handlerString);
  const moduleRoot = handlerString.slice(0, handlerString.length - baseName.length);
  if (moduleRoot.includes('..')) throw new LoadError('Runtime.MalformedHandlerName', "'..' is not allowed in the handler name");
  const m = /^([^.]*)\.(.*)$/.exec(baseName);
  if (!m || !m[1] || !m[2]) throw new LoadError('Runtime.MalformedHandlerName', 'Bad handler: expected FILE.EXPORT');
  let mod;
  try {
    mod = await loadModule(appRoot, moduleRoot, m[1]);
  } catch (e) {
    if (e instanceof LoadError) throw e;
    const type = e instanceof SyntaxError ? 'Runtime.UserCodeSyntaxError' : 'Runtime.ImportModuleError';
    throw new LoadError(type, `${e && e.name ? e.name + ': ' : ''}${e && e.message !== undefined ? e.message : String(e)}`);
  }
  let h = mod;
  for (const key of m[2].split('.')) {
    h = h == null ? undefined : h[key];
  }
  if (typeof h !== 'function') {
    throw new LoadError('Runtime.HandlerNotFound', `${handlerString} is undefined or not exported`);
  }
  return h;
}

// ---------------------------------------------------------------------------
// Logging: console.* and process.stdout/stderr become Log frames of the
// invocation that runs; outside an invocation they go where they always go.

/** The running invocation: { idBuf, requestId, answered }. */
let current = null;
let utilFormat = null;

function sendLog(stream, bytes) {
  const inv = current;
  if (!inv || inv.answered) return false;
  try {
    sendFrame(logFrame(inv.idBuf, stream, bytes));
    return true;
  } catch {
    return false;
  }
}

function logRecord(level, message) {
  const inv = current;
  const line = `${new Date().toISOString()}\t${inv ? inv.requestId : 'undefined'}\t${level}\t${message}\n`;
  return sendLog(STREAM_LOG, Buffer.from(line, 'utf8'));
}

function patchConsole() {
  const levels = [['log', 'INFO'], ['info', 'INFO'], ['warn', 'WARN'], ['error', 'ERROR'], ['debug', 'DEBUG'], ['trace', 'TRACE']];
  for (const [method, level] of levels) {
    const original = console[method];
    console[method] = function (...args) {
      if (!current || current.answered) return original.apply(this, args);
      if (!utilFormat) utilFormat = require('util').format;
      if (!logRecord(level, utilFormat(...args))) original.apply(this, args);
    };
  }
}

/** Wraps process.stdout/stderr's write when the stream is first used (they are lazy). */
function patchStdio(name, stream) {
  const desc = Object.getOwnPropertyDescriptor(process, name);
  if (!desc || !desc.get || !desc.configurable) return;
  let patched = null;
  Object.defineProperty(process, name, {
    configurable: true,
    enumerable: desc.enumerable,
    get() {
      if (patched) return patched;
      patched = desc.get.call(process);
      const write = patched.write;
      patched.write = function (chunk, encoding, cb) {
        if (typeof encoding === 'function') {
          cb = encoding;
          encoding = undefined;
        }
        if (current && !current.answered && (typeof chunk === 'string' || chunk instanceof Uint8Array)) {
          const bytes = typeof chunk === 'string' ? Buffer.from(chunk, encoding || 'utf8') : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
          if (sendLog(stream, bytes)) {
            if (typeof cb === 'function') process.nextTick(cb);
            return true;
          }
        }
        return write.call(this, chunk, encoding, cb);
      };
      return patched;
    },
  });
}

// ---------------------------------------------------------------------------
// Lambda semantics: errors, responses

function stackLines(e) {
  return typeof e.stack === 'string' ? e.stack.split('\n') : [];
}

/** Lambda's error shape. */
function errorShape(e, typeOverride) {
  if (e instanceof Error || (e !== null && typeof e === 'object' && typeof e.message === 'string')) {
    return {
      errorType: typeOverride || (typeof e.name === 'string' && e.name) || 'Error',
      errorMessage: e.message,
      stackTrace: stackLines(e),
    };
  }
  let message;
  if (typeof e === 'string') message = e;
  else {
    try {
      message = JSON.stringify(e);
    } catch {
      message = undefined;
    }
    if (message === undefined) message = String(e);
  }
  return { errorType: typeOverride || typeof e, errorMessage: message, stackTrace: [] };
}

function isHttpResponse(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v) && 'statusCode' in v;
}

/** Maps a handler's return value onto (status, headers, body bytes). */
function toResponse(value) {
  if (!isHttpResponse(value)) {
    const json = JSON.stringify(value);
    return { status: 200, headers: [['content-type', 'application/json']], body: Buffer.from(json === undefined ? 'null' : json, 'utf8') };
  }
  // Lambda function URL / API Gateway proxy response.
  const status = Number(value.statusCode);
  if (!Number.isInteger(status) || status < 100 || status > 999) {
    const err = new Error(`the handler answered with status ${JSON.stringify(value.statusCode)}, outside 100..=999`);
    err.name = 'Runtime.InvalidStatusCode';
    throw err;
  }
  const headers = [];
  const push = (k, v) => {
    if (v === undefined || v === null) return;
    headers.push([String(k), String(v)]);
  };
  if (value.headers && typeof value.headers === 'object') {
    for (const [k, v] of Object.entries(value.headers)) {
      if (Array.isArray(v)) v.forEach((x) => push(k, x));
      else push(k, v);
    }
  }
  if (value.multiValueHeaders && typeof value.multiValueHeaders === 'object') {
    for (const [k, vs] of Object.entries(value.multiValueHeaders)) {
      if (Array.isArray(vs)) vs.forEach((x) => push(k, x));
    }
  }
  if (Array.isArray(value.cookies)) value.cookies.forEach((c) => push('set-cookie', c));
  let body;
  const b = value.body;
  if (b === undefined || b === null) body = Buffer.alloc(0);
  else if (typeof b === 'string') body = Buffer.from(b, value.isBase64Encoded ? 'base64' : 'utf8');
  else if (b instanceof Uint8Array) body = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  else body = Buffer.from(JSON.stringify(b) ?? 'null', 'utf8');
  return { status, headers, body };
}

// ---------------------------------------------------------------------------
// Answering

function answerError(inv, status, shape) {
  if (inv.answered) return;
  const json = JSON.stringify(shape);
  logRecord('ERROR', `Invoke Error \t${json}`);
  inv.answered = true;
  sendAnswer(errorFrame(inv.idBuf, status, json));
}

function answerValue(inv, value) {
  if (inv.answered) return;
  let frame;
  try {
    const r = toResponse(value);
    frame = resultFrame(inv.idBuf, r.status, r.headers, r.body);
  } catch (e) {
    if (e instanceof FrameTooLarge) return answerTooLarge(inv, e);
    if (e instanceof BodyError) return answerError(inv, 500, { errorType: 'Runtime.MarshalError', errorMessage: e.message, stackTrace: [] });
    return answerError(inv, 500, errorShape(e));
  }
  try {
    inv.answered = true;
    sendFrame(frame);
  } catch (e) {
    if (!(e instanceof FrameTooLarge)) return fatalChannel(e, inv);
    inv.answered = false;
    answerTooLarge(inv, e);
  }
}

function answerTooLarge(inv, e) {
  const limits = native
    ? `the Node.js runtime sends bodies of at most ${MAX_BODY} bytes (the gateway's default max_body; ` +
      `above ${MEMFD_THRESHOLD} bytes as a sealed memfd), headers at most ${MAX_META} bytes`
    : `the Node.js runtime sends bodies inline only (at most ${MAX_INLINE_BODY} bytes, headers at most ${MAX_META} bytes): ` +
      `larger bodies need a sealed memfd, which Node.js cannot pass without the ${NATIVE_FILE} addon`;
  answerError(inv, 500, {
    errorType: 'Function.ResponseSizeTooLarge',
    errorMessage: `faas-node: the handler's response cannot be sent: ${e.message}; ${limits}`,
    stackTrace: [],
  });
}

function sendAnswer(frame) {
  try {
    sendFrame(frame);
  } catch (e) {
    fatalChannel(e, null);
  }
}

function fatalChannel(e, inv) {
  const what = inv ? `sending the answer of invocation ${inv.requestId} to the gateway` : 'sending to the gateway';
  die(EXIT_PROTOCOL, `${what}: ${e.message}`);
}

// ---------------------------------------------------------------------------
// One invocation

/** Settles the running invocation with a null result when the event loop empties (Lambda's callbackWaitsForEmptyEventLoop). */
let settleOnEmptyLoop = null;

function runHandler(handler, event, context) {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (outcome) => {
      if (settled) return;
      settled = true;
      settleOnEmptyLoop = null;
      resolve(outcome);
    };
    const callback = (err, result) => {
      if (err !== undefined && err !== null) settle({ error: err });
      else settle({ value: result });
    };
    context.done = callback;
    context.succeed = (result) => callback(null, result);
    context.fail = (err) => callback(err === undefined || err === null ? 'handled' : err);
    settleOnEmptyLoop = () => settle({ value: null });
    let ret;
    try {
      ret = handler(event, context, callback);
    } catch (e) {
      settle({ error: e });
      return;
    }
    if (ret !== null && (typeof ret === 'object' || typeof ret === 'function') && typeof ret.then === 'function') {
      ret.then(
        (v) => settle({ value: v }),
        (e) => settle({ error: e === undefined || e === null ? new Error(`the handler's promise was rejected with ${e}`) : e }),
      );
    }
  });
}

function makeContext(f) {
  const deadline = f.deadline > 0 ? f.deadline : fn.timeoutMs > 0 ? Date.now() + fn.timeoutMs : 0;
  const context = {
    callbackWaitsForEmptyEventLoop: true,
    functionName: fn.name,
    functionVersion: fn.version,
    memoryLimitInMB: fn.memory,
    invokedFunctionArn: fn.arn,
    logGroupName: fn.logGroup,
    logStreamName: fn.logStream,
    awsRequestId: f.id,
    identity: undefined,
    clientContext: undefined,
    getRemainingTimeInMillis() {
      return deadline > 0 ? Math.max(0, deadline - Date.now()) : 0;
    },
  };
  // faas extras, kept out of JSON.stringify(context) like Lambda's internals.
  Object.defineProperty(context, 'faas', {
    value: Object.freeze({ invocationId: f.id, traceId: f.traceId, headers: f.headers, deadline }),
    enumerable: false,
  });
  return context;
}

async function invoke(handler, f) {
  const inv = { idBuf: f.idBuf, requestId: f.id, answered: false };
  if (f.body === null) {
    // The gateway sent the body as a memfd (it does above 64 KiB) and there
    // is no addon: read(2) dropped the fd. Answer without running the handler.
    current = inv;
    answerError(inv, 413, {
      errorType: 'Runtime.RequestTooLarge',
      errorMessage:
        `faas-node: the request body of ${f.bodyLen} bytes arrived as a memfd, which the Node.js runtime cannot receive ` +
        `without its ${NATIVE_FILE} addon (no SCM_RIGHTS in Node.js); it accepts inline request bodies only ` +
        `(the gateway sends bodies up to 65536 bytes inline)`,
      stackTrace: [],
    });
    current = null;
    return;
  }
  const text = f.body.toString('utf8');
  let event;
  if (f.body.length === 0) event = {};
  else {
    try {
      event = JSON.parse(text);
    } catch {
      event = text;
    }
  }
  if (f.traceId) process.env._X_AMZN_TRACE_ID = f.traceId;
  else delete process.env._X_AMZN_TRACE_ID;
  const context = makeContext(f);
  current = inv;
  try {
    const outcome = await runHandler(handler, event, context);
    if ('error' in outcome) answerError(inv, 500, errorShape(outcome.error));
    else answerValue(inv, outcome.value);
  } finally {
    current = null;
  }
}

// ---------------------------------------------------------------------------
// Unhandled errors: fail the running invocation, then exit as Lambda does.

function unhandled(shape, code) {
  const inv = current;
  if (inv && !inv.answered) answerError(inv, 500, shape);
  else writeLine(2, `faas-node: ${shape.errorType}: ${shape.errorMessage}`);
  process.exit(code);
}

function installProcessHooks() {
  process.on('uncaughtException', (err) => unhandled(errorShape(err), EXIT_UNCAUGHT_EXCEPTION));
  process.on('unhandledRejection', (reason) => {
    const shape = errorShape(reason);
    unhandled(
      {
        errorType: 'Runtime.UnhandledPromiseRejection',
        errorMessage: `${shape.errorType}: ${shape.errorMessage}`,
        stackTrace: shape.stackTrace,
      },
      EXIT_UNHANDLED_REJECTION,
    );
  });
  process.on('beforeExit', () => {
    if (settleOnEmptyLoop) settleOnEmptyLoop();
  });
}

// ---------------------------------------------------------------------------
// Main

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const mode = reuseMode();
  checkChannel();
  native = loadNative();
  describeFunction(opts);
  installProcessHooks();
  patchConsole();
  patchStdio('stdout', STREAM_STDOUT);
  patchStdio('stderr', STREAM_STDERR);

  let handler;
  try {
    if (!fs.statSync(opts.code).isDirectory()) throw new LoadError('Runtime.ImportModuleError', 'not a directory');
  } catch (e) {
    const msg = e instanceof LoadError ? e.message : e.code === 'ENOENT' ? 'no such directory' : e.message;
    die(EXIT_LOAD, `cannot load handler ${JSON.stringify(opts.handler)} from ${JSON.stringify(opts.code)}: Runtime.ImportModuleError: ${msg}`);
  }
  try {
    process.chdir(opts.code); // Lambda runs handlers in their task root.
  } catch {
    // Keep the inherited working directory.
  }
  try {
    handler = await loadHandler(opts.code, opts.handler);
  } catch (e) {
    const type = e instanceof LoadError ? e.errorType : 'Runtime.ImportModuleError';
    const msg = (e && e.message !== undefined ? String(e.message) : String(e)).replace(/\s*\n\s*/g, ' | ');
    die(EXIT_LOAD, `cannot load handler ${JSON.stringify(opts.handler)} from ${JSON.stringify(opts.code)}: ${type}: ${msg}`);
  }

  // Kept alive, each answer carries FLAG_READY: one Ready, at the start.
  answerFlags = mode === 'keep_alive' ? FLAG_READY : 0;
  for (let announced = false; ; announced = mode === 'keep_alive') {
    try {
      if (!announced) sendFrame(readyFrame());
    } catch (e) {
      if (e instanceof PeerClosed) process.exit(0);
      die(EXIT_PROTOCOL, `sending Ready to the gateway: ${e.message}`);
    }
    let frame;
    try {
      frame = receiveInvoke();
      if (frame === null) process.exit(0);
    } catch (e) {
      die(EXIT_PROTOCOL, `receiving from the gateway: ${e.message}`);
    }
    await invoke(handler, frame);
    if (mode === 'per_request') process.exit(0);
  }
}

main().catch((e) => die(EXIT_PROTOCOL, `internal error: ${e && e.stack ? e.stack : e}`));
