#!/usr/bin/env python3
"""The handler side of switchboard in Python, standard library only.

switchboard holds the connections; this app tells it who a connection is (the connect proxy, once per
connection, from the app's own session cookie) and pushes to users through switchboard's HTTP API.

Run:  python3 examples/python/app.py --port 8000
      switchboard --config examples/python/switchboard.toml
"""

import argparse
import hmac
import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_URL = os.environ.get("SWITCHBOARD_API_URL", "http://127.0.0.1:8081")
API_KEY = os.environ.get("SWITCHBOARD_API_KEY", "example-api-key")
# switchboard sends this header with every proxy call ([proxy] headers); anyone else is refused.
PROXY_SECRET = os.environ.get("SWITCHBOARD_PROXY_SECRET", "example-proxy-secret")

SESSIONS: dict[str, str] = {}  # session id -> user
SESSIONS_LOCK = threading.Lock()
USER_RE = re.compile(r"^[a-z0-9_]{1,32}$")


def publish(channel: str, data: dict) -> tuple[int, dict]:
    """Publishes through switchboard's server API; returns (HTTP status, decoded answer)."""
    request = urllib.request.Request(
        f"{API_URL}/api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
    except OSError as e:
        return 502, {"error": f"switchboard is not reachable at {API_URL}: {e}"}


class Handler(BaseHTTPRequestHandler):
    def reply(self, status: int, body: dict, cookie: str | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(payload)

    def body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def user(self) -> str | None:
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        sid = cookie.get("sid")
        with SESSIONS_LOCK:
            return SESSIONS.get(sid.value) if sid else None

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        event = self.body()
        if self.path.startswith("/switchboard/"):
            secret = self.headers.get("X-Switchboard-Secret", "")
            if not hmac.compare_digest(secret, PROXY_SECRET):
                return self.reply(403, {"error": {"code": 1403, "message": "not switchboard"}})
            return self.proxy(self.path.removeprefix("/switchboard/"), event)
        if self.path == "/login":
            user = str(event.get("user", ""))
            if not USER_RE.match(user):
                return self.reply(400, {"error": "user: 1 to 32 of a-z, 0-9, _"})
            sid = secrets.token_urlsafe(24)
            with SESSIONS_LOCK:
                SESSIONS[sid] = user
            return self.reply(200, {"user": user}, cookie=f"sid={sid}; HttpOnly; SameSite=Lax; Path=/")
        if self.path == "/notify":
            # Push to a user's personal channel; this request returns at once, the user's browser
            # gets the message through switchboard.
            sender = self.user()
            if sender is None:
                return self.reply(401, {"error": "log in first"})
            to = str(event.get("to", ""))
            status, answer = publish(f"news:{to}", {"from": sender, "text": str(event.get("text", ""))})
            return self.reply(status, answer)
        self.reply(404, {"error": "not found"})

    def proxy(self, event_name: str, event: dict) -> None:
        if event_name == "connect":
            # The client's cookie came with its WebSocket handshake; switchboard forwards it.
            user = self.user()
            if user is None:
                return self.reply(200, {"error": {"code": 1401, "message": "log in first"}})
            return self.reply(200, {"result": {
                "user": user,
                "info": {"name": user},
                "channels": [f"news:{user}"],
            }})
        if event_name == "rpc":
            if event.get("method") == "time":
                return self.reply(200, {"result": {"data": {"now": int(time.time()), "user": event.get("user", "")}}})
            return self.reply(200, {"error": {"code": 1404, "message": "no such method"}})
        self.reply(404, {"error": {"code": 1404, "message": f"unknown event {event_name}"}})

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        if os.environ.get("EXAMPLE_QUIET") is None:
            super().log_message(format, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
