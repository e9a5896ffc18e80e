'use strict';
/**
 * Express middleware: asks banshare's check service about the client before a login,
 * signup or payment handler runs. One GET /v1/check/{ip} with a short timeout (200 ms),
 * Node's built-in fetch, no dependencies.
 *
 *   const express = require('express');
 *   const { banshare } = require('./banshare-check');
 *   const app = express();
 *   app.set('trust proxy', 'loopback');          // req.ip: only your proxies are believed
 *   app.post('/login', banshare({ onChallenge: (req, res) => res.redirect('/captcha') }), login);
 *   app.post('/checkout', banshare({ fail: 'closed' }), checkout);
 *
 * Verdicts: allow and log go on to the handler (log also logs a line); challenge calls
 * `onChallenge(req, res, next, verdict)` (default: 401); block answers 403. When banshare
 * does not answer in time or at all, `fail: 'open'` (the default) goes on and logs why,
 * `fail: 'closed'` answers 503. The handler finds banshare's answer in `req.banshare`
 * (`{verdict, score, reasons, ...}`, or `{verdict: 'unavailable', error}`).
 *
 * The client address is Express's `req.ip`, which follows the app's `trust proxy`
 * setting; a raw X-Forwarded-For header is never read here.
 */

const VERDICTS = new Set(['allow', 'log', 'challenge', 'block']);

const DEFAULTS = {
  /** banshare's check service ([check] listen in banshare.toml). */
  url: 'http://127.0.0.1:8098',
  /** Milliseconds for the whole check, connecting included. */
  timeout: 200,
  /** 'open': banshare down lets requests through; 'closed': it refuses them (503). */
  fail: 'open',
  /** (req, res, next, verdict) => ...: answer a challenged client (CAPTCHA, MFA). */
  onChallenge: null,
  /** Where the log lines go: an object with info() and warn(). */
  logger: console,
};

/** The address as banshare reads it: an IPv4-mapped IPv6 address as plain IPv4. */
function clientAddress(req) {
  const ip = req.ip || '';
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}

/** banshare's answer for `ip`, or an Error saying why there is none. */
async function check(base, ip, timeout) {
  const response = await fetch(`${base}/v1/check/${encodeURIComponent(ip)}`, {
    signal: AbortSignal.timeout(timeout),
  });
  if (!response.ok) {
    throw new Error(`HTTP ${response.status}`);
  }
  const body = await response.json();
  if (!body || !VERDICTS.has(body.verdict)) {
    throw new Error(`unexpected answer ${JSON.stringify(body).slice(0, 100)}`);
  }
  return body;
}

/** Why a check failed, in a few words. */
function why(error) {
  if (error && (error.name === 'TimeoutError' || error.name === 'AbortError')) {
    return 'no answer in time';
  }
  const cause = error && error.cause && (error.cause.code || error.cause.message);
  return cause ? `${error.message}: ${cause}` : String(error && error.message ? error.message : error);
}

/** The middleware, configured by `options` (see DEFAULTS). */
function banshare(options = {}) {
  const o = { ...DEFAULTS, ...options };
  if (o.fail !== 'open' && o.fail !== 'closed') {
    throw new TypeError(`banshare: fail must be 'open' or 'closed', not ${JSON.stringify(o.fail)}`);
  }
  if (!Number.isFinite(o.timeout) || o.timeout <= 0) {
    throw new TypeError(`banshare: timeout must be a positive number of milliseconds, not ${o.timeout}`);
  }
  const base = String(o.url).replace(/\/+$/, '');
  return async function banshareCheck(req, res, next) {
    const ip = clientAddress(req);
    let verdict;
    try {
      verdict = await check(base, ip, o.timeout);
    } catch (error) {
      const reason = why(error);
      req.banshare = { verdict: 'unavailable', error: reason };
      o.logger.warn(`banshare: cannot check ${ip} at ${base} (${reason}); failing ${o.fail} for ${req.method} ${req.path}`);
      if (o.fail === 'open') {
        return next();
      }
      return res.status(503).type('text/plain').send('Service temporarily unavailable\n');
    }
    req.banshare = verdict;
    switch (verdict.verdict) {
      case 'allow':
        return next();
      case 'log':
        o.logger.info(`banshare: ${ip} scored ${verdict.score} (${(verdict.reasons || []).join(', ')}); let through`);
        return next();
      case 'challenge':
        if (o.onChallenge) {
          return o.onChallenge(req, res, next, verdict);
        }
        return res.status(401).type('text/plain').send('Additional verification required\n');
      default:
        return res.status(403).type('text/plain').send('Forbidden\n');
    }
  };
}

module.exports = { banshare, clientAddress };
