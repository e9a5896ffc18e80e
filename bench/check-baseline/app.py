"""The baseline of the check-service benchmark: the pattern web apps use today, a small
Flask app asking one reputation provider (the same WAYSCloud emulator banshare asks) with
a Redis cache in front of it, the same verdict bands, run under gunicorn.

    UPSTREAM=http://127.0.0.1:8099 API_KEY=... gunicorn -w 5 -b 127.0.0.1:8097 app:app
"""

import json
import os

import redis
import requests
from flask import Flask, Response

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8099")
API_KEY = os.environ.get("API_KEY", "")
CACHE_SECONDS = 300

app = Flask(__name__)
cache = redis.Redis(host="127.0.0.1", port=int(os.environ.get("REDIS_PORT", "6379")))
http = requests.Session()


def verdict(score):
    if score >= 85:
        return "block"
    if score >= 60:
        return "challenge"
    if score >= 30:
        return "log"
    return "allow"


@app.route("/v1/check/<ip>")
def check(ip):
    key = "rep:" + ip
    cached = cache.get(key)
    if cached is None:
        try:
            r = http.get(f"{UPSTREAM}/v1/ip/{ip}/threat", headers={"X-API-Key": API_KEY}, timeout=1.5)
            r.raise_for_status()
            score = int(r.json().get("score", 0))
            cache.setex(key, CACHE_SECONDS, score)
        except Exception:  # fail open, not cached
            score = None
    else:
        score = int(cached)
    body = {"ip": ip, "verdict": verdict(score) if score is not None else "allow", "score": score}
    return Response(json.dumps(body), mimetype="application/json")
