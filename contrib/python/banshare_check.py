"""Ask banshare's check service about the client before a login, signup or payment
handler runs: WSGI middleware (Flask, Django, any WSGI app) and ASGI middleware
(FastAPI, Starlette, any ASGI app). Standard library only.

Flask::

    from werkzeug.middleware.proxy_fix import ProxyFix
    from banshare_check import BanshareWSGI
    app.wsgi_app = BanshareWSGI(app.wsgi_app, routes={"/login": "open", "/checkout": "closed"})
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)   # only if a proxy sits in front
    # in a view: request.environ["banshare"]["verdict"]

FastAPI / Starlette::

    from banshare_check import BanshareASGI
    app.add_middleware(BanshareASGI, routes={"/login": "open", "/checkout": "closed"})
    # run behind a proxy with: uvicorn --proxy-headers --forwarded-allow-ips 127.0.0.1
    # in a handler: request.state.banshare["verdict"]

Each request to a listed route (the path itself or below it) makes one GET
/v1/check/{ip} with a short timeout (200 ms). allow and log go on to the app (log also
logs a line); challenge calls ``on_challenge`` (default: 401); block answers 403. When
banshare does not answer in time or at all, an ``"open"`` route goes on (and logs why), a
``"closed"`` one answers 503. The verdict (``{"verdict", "score", "reasons", ...}`` or
``{"verdict": "unavailable", "error"}``) is in ``environ["banshare"]`` (WSGI) and in
``scope["state"]["banshare"]`` (ASGI: ``request.state.banshare``).

The client address is the server's: WSGI's ``REMOTE_ADDR``, ASGI's ``scope["client"]``.
Behind a proxy, let the framework's trusted-proxy setting set it (werkzeug's ProxyFix,
uvicorn's ``--forwarded-allow-ips``); a raw X-Forwarded-For header is never read here.
"""

import asyncio
import http.client
import json
import logging
import socket
import time
import urllib.parse

__all__ = ["Banshare", "BanshareASGI", "BanshareWSGI", "Unavailable"]

VERDICTS = ("allow", "log", "challenge", "block")
# The most of an answer read (banshare's are a few hundred bytes).
_MAX_ANSWER = 1 << 20
log = logging.getLogger("banshare")


class Unavailable(Exception):
    """banshare gave no usable answer: why, in a few words."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _parse(status, body):
    if status != 200:
        raise Unavailable(f"HTTP {status}")
    try:
        answer = json.loads(body)
    except ValueError:
        raise Unavailable("an answer that is not JSON") from None
    if not isinstance(answer, dict) or answer.get("verdict") not in VERDICTS:
        raise Unavailable(f"unexpected answer {body[:100]!r}")
    return answer


class Banshare:
    """A client of banshare's check service.

    ``url``: ``http://127.0.0.1:8098`` (``[check] listen``) or ``unix:/run/banshare/check.sock``.
    ``timeout``: seconds for the whole check, connecting included.
    """

    def __init__(self, url="http://127.0.0.1:8098", timeout=0.2):
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"banshare: timeout must be a positive number of seconds, not {timeout!r}")
        self.url, self.timeout = url, float(timeout)
        if url.startswith("unix:"):
            self._unix, self._host, self._port = url[len("unix:"):], None, None
        else:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"banshare: url must be http://HOST:PORT or unix:PATH, not {url!r}")
            self._unix, self._host, self._port = None, parts.hostname, parts.port or 80

    def _path(self, ip):
        return "/v1/check/" + urllib.parse.quote(ip, safe="")

    def check(self, ip):
        """banshare's answer for ``ip`` (a dict); raises Unavailable."""
        deadline = time.monotonic() + self.timeout
        if self._unix:
            conn = _UnixConnection(self._unix, self.timeout)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.request("GET", self._path(ip), headers={"Connection": "close"})
            conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            response = conn.getresponse()
            body = response.read(_MAX_ANSWER)
            if time.monotonic() > deadline:
                raise Unavailable("no answer in time")
            return _parse(response.status, body)
        except (socket.timeout, TimeoutError):
            raise Unavailable("no answer in time") from None
        except (OSError, http.client.HTTPException) as e:
            raise Unavailable(f"{type(e).__name__}: {e}") from None
        finally:
            conn.close()

    async def acheck(self, ip):
        """``check`` for asyncio: one connection, never blocking the event loop."""
        try:
            return await asyncio.wait_for(self._acheck(ip), self.timeout)
        except asyncio.TimeoutError:
            raise Unavailable("no answer in time") from None
        except OSError as e:
            raise Unavailable(f"{type(e).__name__}: {e}") from None

    async def _acheck(self, ip):
        if self._unix:
            reader, writer = await asyncio.open_unix_connection(self._unix)
        else:
            reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            # HTTP/1.0: the answer ends with the connection, never chunked.
            writer.write(f"GET {self._path(ip)} HTTP/1.0\r\nHost: banshare\r\n\r\n".encode())
            raw = b""
            while len(raw) < _MAX_ANSWER and (chunk := await reader.read(65536)):
                raw += chunk
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise Unavailable("a broken HTTP answer") from None
        return _parse(status, body)


def _route(routes, path):
    """The fail mode of the route ``path`` falls under, or None (not checked)."""
    for prefix, mode in routes.items():
        base = prefix.rstrip("/")
        if path == prefix or path == base or path.startswith(base + "/"):
            return mode
    return None


def _modes(routes):
    for prefix, mode in routes.items():
        if mode not in ("open", "closed"):
            raise ValueError(f"banshare: route {prefix!r}: fail mode must be 'open' or 'closed', not {mode!r}")
    return dict(routes)


def _decide(verdict, ip, mode, method, path, url):
    """What to do: 'next', 'challenge', 'block' or 'closed'; logs what deserves a line."""
    kind = verdict["verdict"]
    if kind == "unavailable":
        log.warning("banshare: cannot check %s at %s (%s); failing %s for %s %s",
                    ip, url, verdict["error"], mode, method, path)
        return "next" if mode == "open" else "closed"
    if kind == "log":
        log.info("banshare: %s scored %s (%s); let through", ip, verdict.get("score"),
                 ", ".join(verdict.get("reasons") or []))
    return {"allow": "next", "log": "next"}.get(kind, kind)


_PLAIN = [("Content-Type", "text/plain; charset=utf-8")]
_ANSWERS = {
    "challenge": ("401 Unauthorized", b"Additional verification required\n"),
    "block": ("403 Forbidden", b"Forbidden\n"),
    "closed": ("503 Service Unavailable", b"Service temporarily unavailable\n"),
}


class BanshareWSGI:
    """WSGI middleware. ``routes``: path -> "open" | "closed"; ``on_challenge``: a WSGI
    app ``(environ, start_response)`` answering a challenged client (the verdict is in
    ``environ["banshare"]``)."""

    def __init__(self, app, routes, banshare=None, on_challenge=None):
        self.app, self.routes = app, _modes(routes)
        self.banshare = banshare or Banshare()
        self.on_challenge = on_challenge

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        mode = _route(self.routes, path)
        if mode is None:
            return self.app(environ, start_response)
        ip = environ.get("REMOTE_ADDR", "")
        try:
            verdict = self.banshare.check(ip)
        except Unavailable as e:
            verdict = {"verdict": "unavailable", "error": str(e)}
        environ["banshare"] = verdict
        action = _decide(verdict, ip, mode, environ.get("REQUEST_METHOD"), path, self.banshare.url)
        if action == "next":
            return self.app(environ, start_response)
        if action == "challenge" and self.on_challenge:
            return self.on_challenge(environ, start_response)
        status, body = _ANSWERS[action]
        start_response(status, _PLAIN + [("Content-Length", str(len(body)))])
        return [body]


class BanshareASGI:
    """ASGI middleware. ``routes``: path -> "open" | "closed"; ``on_challenge``: an ASGI
    app ``(scope, receive, send)`` answering a challenged client (the verdict is in
    ``scope["state"]["banshare"]``)."""

    def __init__(self, app, routes, banshare=None, on_challenge=None):
        self.app, self.routes = app, _modes(routes)
        self.banshare = banshare or Banshare()
        self.on_challenge = on_challenge

    async def __call__(self, scope, receive, send):
        mode = _route(self.routes, scope.get("path", "")) if scope["type"] == "http" else None
        if mode is None:
            return await self.app(scope, receive, send)
        ip = (scope.get("client") or ("", 0))[0]
        try:
            verdict = await self.banshare.acheck(ip)
        except Unavailable as e:
            verdict = {"verdict": "unavailable", "error": str(e)}
        scope.setdefault("state", {})["banshare"] = verdict
        action = _decide(verdict, ip, mode, scope.get("method"), scope.get("path"), self.banshare.url)
        if action == "next":
            return await self.app(scope, receive, send)
        if action == "challenge" and self.on_challenge:
            return await self.on_challenge(scope, receive, send)
        status, body = _ANSWERS[action]
        headers = [(k.lower().encode(), v.encode()) for k, v in _PLAIN]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": int(status.split()[0]), "headers": headers})
        await send({"type": "http.response.body", "body": body})
