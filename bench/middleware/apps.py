"""The benchmark's apps: the same tiny app with a route guarded by banshare's middleware
(/guarded) and one without (/plain). Behind a trusted proxy (loopback): the client
address comes from X-Forwarded-For through the framework's own setting.

    python apps.py flask|fastapi PORT BANSHARE_URL
"""
import sys

sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/contrib/python")
from banshare_check import Banshare, BanshareASGI, BanshareWSGI  # noqa: E402

kind, port, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ROUTES = {"/guarded": "open"}

if kind == "flask":
    import logging

    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix
    from werkzeug.serving import run_simple

    app = Flask("bench")

    @app.get("/plain")
    @app.get("/guarded")
    def hello():
        return "hello\n"

    app.wsgi_app = ProxyFix(BanshareWSGI(app.wsgi_app, ROUTES, Banshare(url)), x_for=1)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    run_simple("127.0.0.1", port, app, threaded=True)
else:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/plain", response_class=PlainTextResponse)
    @app.get("/guarded", response_class=PlainTextResponse)
    async def hello():
        return "hello\n"

    app.add_middleware(BanshareASGI, routes=ROUTES, banshare=Banshare(url))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=True,
                forwarded_allow_ips="127.0.0.1")
