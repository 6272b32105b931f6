// The Node.js handler (CommonJS) traced to derive profiles/node.json (see
// ../../README.md). An ordinary Lambda handler: heavy built-in modules at
// module scope, module state, and one branch per thing a typical handler
// does, chosen by the event's "case" (driver.py sends them in turn).
// esm.mjs runs the same cases as an ES module.
'use strict';

const zlib = require('zlib');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const url = require('url');
const util = require('util');
const os = require('os');

let count = 0;
const SELF = fs.readFileSync(__filename);

async function echo(event, context) {
  const json = JSON.stringify(event);
  return {
    count,
    len: json.length,
    gzip: zlib.gzipSync(json).length,
    gunzip: zlib.gunzipSync(zlib.gzipSync('abc')).toString(),
    deflate: (await util.promisify(zlib.deflate)(SELF)).length,
    sha: crypto.createHash('sha256').update(json).digest('hex'),
    hmac: crypto.createHmac('sha256', 'k').update(json).digest('base64'),
    rand: crypto.randomBytes(8).toString('hex'),
    uuid: crypto.randomUUID(),
    scrypt: (await util.promisify(crypto.scrypt)('pw', 'salt', 16)).toString('hex'),
    url: new url.URL('/a?b=1', 'https://example.com').href,
    parsed: url.parse('https://example.com/x?y=2').query,
    base: path.basename(__filename),
    fmt: util.format('%s=%d', 'n', 1),
    remaining: context.getRemainingTimeInMillis(),
    cwd: process.cwd(),
    // process.memoryUsage() reads /proc, which the sandbox does not have.
    maxrss: process.resourceUsage().maxRSS > 0,
  };
}

function big(event) {
  return { statusCode: 200, headers: { 'content-type': 'text/plain' }, body: 'x'.repeat(event.n) };
}

function boom(event) {
  throw new Error('bad input: ' + event.boom);
}

async function log(event, context) {
  console.log('console line of', context.awsRequestId);
  console.info('info %o', { k: 1 });
  console.warn('warn');
  console.error('error', new Error('logged'));
  console.debug('debug');
  process.stdout.write('partial line without a newline');
  process.stderr.write('stderr line\n');
  await new Promise((r) => setImmediate(r));
  return { logged: true };
}

async function tmp(event) {
  // /tmp is the writable scratch space of a Lambda function.
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'derive-'));
  const a = path.join(d, 'a.json');
  fs.writeFileSync(a, JSON.stringify(event));
  const fd = fs.openSync(a, 'r+');
  fs.fsyncSync(fd);
  fs.ftruncateSync(fd, 2);
  // Positional and vectored I/O (libuv picks pread/pwrite/readv/writev/
  // preadv/pwritev by whether there is a position and more than one buffer).
  fs.writeSync(fd, 'xy', 0);
  fs.writevSync(fd, [Buffer.from('a'), Buffer.from('b')], 2);
  fs.writevSync(fd, [Buffer.from('c'), Buffer.from('d')]);
  fs.readvSync(fd, [Buffer.alloc(1), Buffer.alloc(1)], 0);
  fs.readvSync(fd, [Buffer.alloc(1), Buffer.alloc(1)]);
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
  // A file of the (read-only) code directory copied to /tmp.
  fs.copyFileSync(__filename, path.join(d, 'copy.js'));
  fs.renameSync(a, path.join(d, 'b.json'));
  fs.mkdirSync(path.join(d, 'sub', 'deep'), { recursive: true });
  fs.copyFileSync(path.join(d, 'b.json'), path.join(d, 'sub', 'c.json'));
  fs.chmodSync(path.join(d, 'sub', 'c.json'), 0o600);
  fs.utimesSync(path.join(d, 'sub', 'c.json'), new Date(), new Date());
  fs.symlinkSync('b.json', path.join(d, 'link'));
  fs.linkSync(path.join(d, 'b.json'), path.join(d, 'hard'));
  fs.appendFileSync(path.join(d, 'log.txt'), 'line\n');
  // The promise API runs on libuv's thread pool.
  await fs.promises.writeFile(path.join(d, 'p.txt'), 'promised');
  const read = await fs.promises.readFile(path.join(d, 'link'), 'utf8');
  const names = (await fs.promises.readdir(d)).sort();
  const st = await fs.promises.stat(path.join(d, 'p.txt'));
  const stream = fs.createWriteStream(path.join(d, 's.txt'));
  await new Promise((r, j) => stream.end('streamed', (e) => (e ? j(e) : r())));
  const back = await new Promise((r, j) => {
    let s = '';
    fs.createReadStream(path.join(d, 's.txt'), 'utf8').on('data', (c) => (s += c)).on('end', () => r(s)).on('error', j);
  });
  fs.rmSync(d, { recursive: true, force: true });
  return { names, read, size: st.size, back };
}

async function http_(event) {
  // Outbound HTTP (as to an API): name resolution (dns.lookup, that is
  // getaddrinfo on the thread pool), then TCP; with http.get and fetch.
  const http = require('http');
  const srv = http.createServer((req, res) => res.end(JSON.stringify({ pong: req.url })));
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  const host = event.host || 'localhost';
  const first = await new Promise((r, j) => {
    http.get({ host, port, path: '/x', family: 4 }, (res) => {
      let s = '';
      res.on('data', (c) => (s += c)).on('end', () => r(JSON.parse(s)));
    }).on('error', j);
  });
  const second = await (await fetch(`http://127.0.0.1:${port}/y`)).json();
  const addrs = await require('dns').promises.lookup(host, { all: true });
  srv.close();
  return { first, second, addrs: addrs.length };
}

async function subprocess() {
  const cp = require('child_process');
  const out = cp.execFileSync('/bin/echo', ['from a child'], { encoding: 'utf8' }).trim();
  // A shell pipeline of common tools (shell.sh), asynchronously, and a
  // child killed at its timeout.
  const script = fs.readFileSync(path.join(__dirname, 'shell.sh'), 'utf8');
  const sh = await util.promisify(cp.exec)(script, { shell: '/bin/sh' });
  const killed = cp.spawnSync('sleep', ['5'], { timeout: 100 }).signal;
  return { out, sh: sh.stdout.trim(), killed };
}

async function parallel() {
  // A worker thread (its own V8 isolate) and the thread pool.
  const { Worker } = require('worker_threads');
  const w = new Worker('require("worker_threads").parentPort.postMessage(6 * 7)', { eval: true });
  const fromWorker = await new Promise((r, j) => w.once('message', r).once('error', j));
  await w.terminate();
  const keys = await Promise.all([1, 2, 3, 4].map((i) => util.promisify(crypto.pbkdf2)('pw', 's' + i, 1000, 16, 'sha256')));
  return { fromWorker, keys: keys.length };
}

async function sleep(event) {
  // Timers and the thread pool are busy while driver.py stops and
  // continues the process, as a freezer or checkpoint would.
  const ms = (event.seconds || 0.5) * 1000;
  const work = util.promisify(crypto.pbkdf2)('pw', 'salt', 200000, 32, 'sha256');
  await new Promise((r) => setTimeout(r, ms));
  await work;
  return { slept: true };
}

const CASES = { echo, big, boom, log, tmp, http: http_, subprocess, parallel, sleep };

exports.handler = async (event, context) => {
  count += 1;
  const c = (event && event.case) || 'echo';
  return CASES[c](event, context);
};
