#!/usr/bin/env python3
"""A tiny demo web app for the rollback-agent quickstart (Python 3 stdlib only).

It serves on 127.0.0.1:$PORT (default 18080):

  GET /health  -> the status code in release.json's "health" field, with a
                  JSON body like {"status": "ok", "version": "1.0.0"}
  GET /        -> one line of text naming the version

Everything that differs between releases is data in release.json, which is
read once at start-up from the directory this file really lives in (the
`current` symlink is resolved first), so a process keeps serving the release
it was started from until the restart command replaces it.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.realpath(__file__))


def load_release():
    with open(os.path.join(HERE, "release.json"), encoding="utf-8") as f:
        release = json.load(f)
    health = release.get("health")
    if not isinstance(health, int) or isinstance(health, bool) or not 100 <= health <= 599:
        sys.exit(f"app.py: release.json: `health` must be an HTTP status code, got {health!r}")
    return release


RELEASE = load_release()
VERSION = str(RELEASE.get("version", "unknown"))
HEALTH = RELEASE["health"]


class Handler(BaseHTTPRequestHandler):
    server_version = "quickstart-shop/" + VERSION

    def _send(self, code, content_type, body):
        data = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            status = "ok" if 200 <= HEALTH < 400 else "broken"
            body = {"status": status, "version": VERSION}
            if "note" in RELEASE:
                body["note"] = RELEASE["note"]
            self._send(HEALTH, "application/json", json.dumps(body) + "\n")
        elif path == "/":
            self._send(200, "text/plain; charset=utf-8", f"Hello from shop {VERSION}\n")
        else:
            self._send(404, "text/plain; charset=utf-8", "not found\n")

    do_HEAD = do_GET

    def log_message(self, fmt, *args):
        sys.stderr.write(f"[shop {VERSION}] {self.address_string()} {fmt % args}\n")


def main():
    port = int(os.environ.get("PORT", "18080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"shop {VERSION} listening on http://127.0.0.1:{port} (health {HEALTH})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
