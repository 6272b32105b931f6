// `node --test faas-guest/runtimes/node/` entry point.
//
// The tests themselves live in test_runtime.py: the gateway side needs a
// SOCK_SEQPACKET socketpair and SCM_RIGHTS (to send a memfd body), which
// Node.js cannot create, so the harness is Python (standard library only).
// This file runs it and fails when it fails. (Node 20's `--test` discovers
// `*.test.js` files in a directory, not `test_*.js`, hence the name.)
//
// test_runtime.py runs every case twice: without the native addon and with
// it (built once with `cargo build --release --offline` of native/; skipped,
// with the reason reported below, when cargo is not installed).
'use strict';

const test = require('node:test');
const assert = require('node:assert');
const { spawnSync } = require('node:child_process');

const python = process.env.PYTHON || 'python3';
const probe = spawnSync(python, ['--version'], { encoding: 'utf8' });

test('faas_runtime.js against a SEQPACKET gateway (test_runtime.py)', { skip: probe.error ? `${python} not found` : false }, (t) => {
  const r = spawnSync(python, ['-m', 'unittest', '-v', 'test_runtime'], {
    cwd: __dirname,
    encoding: 'utf8',
    env: { ...process.env, NODE: process.execPath, PYTHONDONTWRITEBYTECODE: '1' },
    timeout: 600_000,
  });
  const out = `${r.stdout || ''}${r.stderr || ''}`;
  assert.strictEqual(r.status, 0, `python3 -m unittest test_runtime failed (status ${r.status}, signal ${r.signal}):\n${out}`);
  const ran = /Ran (\d+) tests?/.exec(out);
  assert.ok(ran && Number(ran[1]) > 0, `no tests ran:\n${out}`);
  t.diagnostic(ran[0]);
  // unittest -v: "setUpClass (test_runtime.NativeRuntimeTest) ... skipped 'reason'"
  for (const m of out.matchAll(/^(\S+)(?: \(([^)]*)\))? \.\.\. skipped '(.*)'$/gm)) {
    t.diagnostic(`skipped ${m[2] || m[1]}: ${m[3]}`);
  }
});
