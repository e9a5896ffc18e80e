'use strict';
// The Express middleware against a running banshare (started by the Rust integration test
// tests/integration/web.rs, which passes BANSHARE_URL and the addresses of each verdict in
// BANSHARE_TEST_IPS): the four verdicts, the challenge hook, an untrusted forwarded header
// ignored, banshare down and banshare silent (fail-open and fail-closed).
//   node --test contrib/node/test.js      (express from NODE_PATH)

const test = require('node:test');
const assert = require('node:assert');
const http = require('node:http');
const net = require('node:net');
const express = require('express');
const { banshare } = require('./banshare-check');

const URL_ = process.env.BANSHARE_URL;
const IPS = JSON.parse(process.env.BANSHARE_TEST_IPS || '{}');
if (!URL_ || !IPS.allow) {
  throw new Error('BANSHARE_URL and BANSHARE_TEST_IPS are set by tests/integration/web.rs');
}

/** A logger that keeps its lines. */
function recorder() {
  const lines = [];
  return { lines, info: (l) => lines.push(`info ${l}`), warn: (l) => lines.push(`warn ${l}`) };
}

/** An app trusting 127.0.0.1 as its proxy, with /open and /closed guarded by `options`. */
function app(options) {
  const a = express();
  a.set('trust proxy', '127.0.0.1');
  const reply = (req, res) => res.json({ ip: req.ip, banshare: req.banshare });
  a.get('/open', banshare(options), reply);
  a.get('/closed', banshare({ ...options, fail: 'closed' }), reply);
  a.get('/captcha', banshare({ ...options, onChallenge: (req, res) => res.status(200).send('captcha page') }), reply);
  return a;
}

/** Serves `handler` on a free loopback port; resolves to [server, port]. */
function serve(handler) {
  return new Promise((resolve) => {
    const server = http.createServer(handler).listen(0, '127.0.0.1', () => resolve([server, server.address().port]));
  });
}

/** GET path on port, from `from`, with X-Forwarded-For `xff`: {status, body, ms}. */
function get(port, path, xff, from = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const headers = xff ? { 'X-Forwarded-For': xff } : {};
    const req = http.request({ host: '127.0.0.1', port, path, headers, localAddress: from, agent: false }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        let parsed = body;
        try {
          parsed = JSON.parse(body);
        } catch (_) {}
        resolve({ status: res.statusCode, body: parsed, ms });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

test('the four verdicts, the challenge hook and the verdict for the handler', async () => {
  const log = recorder();
  const [server, port] = await serve(app({ url: URL_, logger: log }));
  try {
    let r = await get(port, '/open', IPS.allow);
    assert.strictEqual(r.status, 200);
    assert.strictEqual(r.body.ip, IPS.allow, 'req.ip from the trusted proxy');
    assert.strictEqual(r.body.banshare.verdict, 'allow');

    r = await get(port, '/open', IPS.log);
    assert.strictEqual(r.status, 200);
    assert.strictEqual(r.body.banshare.verdict, 'log');
    assert.ok(log.lines.some((l) => l.startsWith(`info banshare: ${IPS.log} scored`)), log.lines.join('\n'));

    r = await get(port, '/open', IPS.challenge);
    assert.strictEqual(r.status, 401, 'challenge without a hook');
    r = await get(port, '/captcha', IPS.challenge);
    assert.deepStrictEqual([r.status, r.body], [200, 'captcha page'], 'the hook answers');

    for (const ip of [IPS.block, IPS.banned]) {
      r = await get(port, '/open', ip);
      assert.strictEqual(r.status, 403, `block ${ip}`);
    }
  } finally {
    server.close();
  }
});

test('a forwarded header from a peer that is not a trusted proxy is ignored', async () => {
  const [server, port] = await serve(app({ url: URL_ }));
  try {
    const r = await get(port, '/open', IPS.banned, '127.0.0.2');
    assert.strictEqual(r.status, 200, 'the peer itself (127.0.0.2) is checked, not the header');
    assert.strictEqual(r.body.ip, '127.0.0.2');
    assert.strictEqual(r.body.banshare.verdict, 'allow');
  } finally {
    server.close();
  }
});

test('banshare down: fail-open goes through with a log line, fail-closed answers 503', async () => {
  const closed = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
  const log = recorder();
  const [server, port] = await serve(app({ url: `http://127.0.0.1:${closed}`, logger: log }));
  try {
    let r = await get(port, '/open', IPS.banned);
    assert.strictEqual(r.status, 200);
    assert.strictEqual(r.body.banshare.verdict, 'unavailable');
    assert.ok(log.lines.some((l) => l.startsWith('warn banshare: cannot check') && l.includes('ECONNREFUSED')), log.lines.join('\n'));
    r = await get(port, '/closed', IPS.allow);
    assert.strictEqual(r.status, 503);
  } finally {
    server.close();
  }
});

test('banshare silent: the timeout (200 ms) ends the wait, open and closed', async () => {
  const sockets = [];
  const silent = await new Promise((resolve) => {
    const s = net.createServer((c) => sockets.push(c)).listen(0, '127.0.0.1', () => resolve(s));
  });
  const log = recorder();
  const [server, port] = await serve(app({ url: `http://127.0.0.1:${silent.address().port}`, logger: log }));
  try {
    let r = await get(port, '/open', IPS.allow);
    assert.strictEqual(r.status, 200);
    assert.ok(r.ms >= 190 && r.ms < 1000, `answered after ${r.ms} ms`);
    assert.ok(log.lines.some((l) => l.includes('no answer in time')), log.lines.join('\n'));
    r = await get(port, '/closed', IPS.allow);
    assert.strictEqual(r.status, 503);
  } finally {
    server.close();
    sockets.forEach((c) => c.destroy());
    silent.close();
  }
});

test('bad options are refused at once', () => {
  assert.throws(() => banshare({ fail: 'maybe' }), /fail must be 'open' or 'closed'/);
  assert.throws(() => banshare({ timeout: -1 }), /timeout must be a positive number/);
});
