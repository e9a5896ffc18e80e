"""The Python middleware with real Flask (WSGI, werkzeug's server) and real FastAPI (ASGI,
uvicorn) against a running banshare, started by the Rust integration test
tests/integration/web.rs, which passes BANSHARE_URL, BANSHARE_SOCKET_URL (the same check
service over a Unix socket) and the addresses of each verdict in BANSHARE_TEST_IPS: the
four verdicts, the challenge hook, an untrusted forwarded header ignored, banshare down and
banshare silent (fail-open and fail-closed), the verdict in the handler.

    python -m unittest contrib/python/test_banshare_check.py     (Flask, FastAPI, uvicorn)
"""

import http.client
import json
import logging
import os
import socket
import threading
import time
import unittest

import uvicorn
from fastapi import FastAPI, Request
from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.serving import make_server

from banshare_check import Banshare, BanshareASGI, BanshareWSGI

URL = os.environ.get("BANSHARE_URL", "")
SOCKET_URL = os.environ.get("BANSHARE_SOCKET_URL", "")
IPS = json.loads(os.environ.get("BANSHARE_TEST_IPS", "{}"))
ROUTES = {"/open": "open", "/closed": "closed", "/captcha": "open"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, xff=None, source="127.0.0.1"):
    """GET from ``source`` with X-Forwarded-For ``xff``: (status, body, seconds)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    conn.request("GET", path, headers={"X-Forwarded-For": xff} if xff else {})
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    try:
        body = json.loads(body)
    except ValueError:
        pass
    return response.status, body, time.monotonic() - started


def flask_app(banshare, proxies):
    app = Flask("banshare-test")

    @app.get("/<path:name>")
    def reply(name):
        return {"ip": request.remote_addr, "banshare": request.environ.get("banshare")}

    def captcha(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"captcha page"]

    app.wsgi_app = BanshareWSGI(app.wsgi_app, ROUTES, banshare, on_challenge=captcha_only(captcha))
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)
    return app


def captcha_only(hook):
    """The challenge hook on /captcha only; elsewhere None (the default 401)."""

    def wsgi(environ, start_response):
        if environ["PATH_INFO"] == "/captcha":
            return hook(environ, start_response)
        body = b"Additional verification required\n"
        start_response("401 Unauthorized", [("Content-Length", str(len(body)))])
        return [body]

    return wsgi


def fastapi_app(banshare):
    app = FastAPI()

    @app.get("/{name}")
    async def reply(name: str, req: Request):
        return {"ip": req.client.host, "banshare": getattr(req.state, "banshare", None)}

    async def captcha(scope, receive, send):
        if scope["path"] != "/captcha":
            await send({"type": "http.response.start", "status": 401, "headers": []})
            return await send({"type": "http.response.body", "body": b""})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"captcha page"})

    app.add_middleware(BanshareASGI, routes=ROUTES, banshare=banshare, on_challenge=captcha)
    return app


class Served:
    """A Flask app under werkzeug or a FastAPI app under uvicorn, on a free port."""

    def __init__(self, kind, banshare, proxies=True):
        self.port = free_port()
        if kind == "flask":
            self.server = make_server("127.0.0.1", self.port, flask_app(banshare, proxies), threaded=True)
            self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
            self.stop = self.server.shutdown
        else:
            trusted = "127.0.0.1" if proxies else "192.0.2.1"
            config = uvicorn.Config(fastapi_app(banshare), host="127.0.0.1", port=self.port, log_level="warning",
                                    proxy_headers=True, forwarded_allow_ips=trusted)
            self.server = uvicorn.Server(config)
            self.thread = threading.Thread(target=self.server.run, daemon=True)

            def stop():
                self.server.should_exit = True
                self.thread.join(5)

            self.stop = stop
        self.thread.start()
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{kind} did not start")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Middleware:
    """The same cases for both frameworks (``kind``)."""

    kind = None

    def setUp(self):
        if not URL or not IPS:
            self.fail("BANSHARE_URL and BANSHARE_TEST_IPS are set by tests/integration/web.rs")

    def test_the_four_verdicts_and_the_challenge_hook(self):
        with self.assertLogs("banshare", logging.INFO) as logs, Served(self.kind, Banshare(URL)) as s:
            status, body, _ = get(s.port, "/open", IPS["allow"])
            self.assertEqual(status, 200)
            self.assertEqual(body["ip"], IPS["allow"], "the client address from the trusted proxy")
            self.assertEqual(body["banshare"]["verdict"], "allow")
            status, body, _ = get(s.port, "/open", IPS["log"])
            self.assertEqual((status, body["banshare"]["verdict"]), (200, "log"))
            status, _, _ = get(s.port, "/open", IPS["challenge"])
            self.assertEqual(status, 401, "challenge, default answer")
            status, body, _ = get(s.port, "/captcha", IPS["challenge"])
            self.assertEqual((status, body), (200, "captcha page"), "the hook answers")
            for ip in (IPS["block"], IPS["banned"]):
                status, _, _ = get(s.port, "/open", ip)
                self.assertEqual(status, 403, ip)
            status, body, _ = get(s.port, "/unguarded", IPS["banned"])
            self.assertEqual((status, body["banshare"]), (200, None), "routes not listed are not checked")
        self.assertTrue(any(f"banshare: {IPS['log']} scored" in line for line in logs.output), logs.output)

    def test_a_forwarded_header_from_an_untrusted_peer_is_ignored(self):
        with Served(self.kind, Banshare(URL), proxies=False) as s:
            status, body, _ = get(s.port, "/open", IPS["banned"])
            self.assertEqual(status, 200, "the peer (127.0.0.1) is checked, not the header")
            self.assertEqual(body["ip"], "127.0.0.1")
            self.assertEqual(body["banshare"]["verdict"], "allow")

    def test_over_the_unix_socket(self):
        with Served(self.kind, Banshare(SOCKET_URL)) as s:
            self.assertEqual(get(s.port, "/open", IPS["banned"])[0], 403)
            self.assertEqual(get(s.port, "/open", IPS["allow"])[0], 200)

    def test_banshare_down_fails_open_with_a_log_line_or_closed(self):
        down = f"http://127.0.0.1:{free_port()}"
        with self.assertLogs("banshare", logging.WARNING) as logs, Served(self.kind, Banshare(down)) as s:
            status, body, _ = get(s.port, "/open", IPS["banned"])
            self.assertEqual((status, body["banshare"]["verdict"]), (200, "unavailable"))
            self.assertEqual(get(s.port, "/closed", IPS["allow"])[0], 503)
        self.assertTrue(any("cannot check" in line and "failing open" in line for line in logs.output), logs.output)

    def test_banshare_silent_ends_at_the_timeout(self):
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        try:
            with self.assertLogs("banshare", logging.WARNING) as logs, Served(self.kind, Banshare(url)) as s:
                status, body, seconds = get(s.port, "/open", IPS["allow"])
                self.assertEqual((status, body["banshare"]["verdict"]), (200, "unavailable"))
                self.assertTrue(0.19 <= seconds < 1.0, f"answered after {seconds:.3f} s")
                self.assertEqual(get(s.port, "/closed", IPS["allow"])[0], 503)
            self.assertTrue(any("no answer in time" in line for line in logs.output), logs.output)
        finally:
            silent.close()


class FlaskTest(Middleware, unittest.TestCase):
    kind = "flask"


class FastAPITest(Middleware, unittest.TestCase):
    kind = "fastapi"


class OptionsTest(unittest.TestCase):
    def test_bad_options_are_refused_at_once(self):
        with self.assertRaisesRegex(ValueError, "timeout must be a positive"):
            Banshare(timeout=0)
        with self.assertRaisesRegex(ValueError, "url must be"):
            Banshare("https://example.com")
        with self.assertRaisesRegex(ValueError, "fail mode must be 'open' or 'closed'"):
            BanshareWSGI(None, {"/login": "maybe"})


if __name__ == "__main__":
    unittest.main()
