#!/usr/bin/env python3
"""shop: the order-sync service of an Amazon seller, the rollback-agent
quickstart's app (Python 3 stdlib only).

Every SYNC_EVERY seconds (default 1) it asks the Selling Partner API
(Orders API 2026-01-01 searchOrders) for the orders updated since its
position, following pagination.nextToken pages, keeps them, and moves its
position to the newest lastUpdatedTime it has seen. The position outlives restarts in
$SHOP_DATA_DIR/sync-position.json; on its very first run it starts ten
minutes back.

It serves on 127.0.0.1:$PORT (default 18080):

  GET /status  -> {"last_order_update": "<RFC 3339>", ...}: the position (the
                  contract of the agent's order-sync-lag check); 503 until
                  the position is known
  GET /health  -> 200 {"status": "ok", "version": "..."} while it runs
  GET /        -> one line of text naming the version

Environment: SPAPI_CLIENT_ID, SPAPI_CLIENT_SECRET, SPAPI_REFRESH_TOKEN (the
Login with Amazon credentials, required), SPAPI_ENDPOINT (default
http://127.0.0.1:18081, the demo's fake), LWA_TOKEN_URL (default
<SPAPI_ENDPOINT>/auth/o2/token), SPAPI_MARKETPLACE_ID (default
ATVPDKIKX0DER), SHOP_DATA_DIR (default ./shop-data), PORT, SYNC_EVERY.
"""

import datetime
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.realpath(__file__))
with open(os.path.join(HERE, "release.json"), encoding="utf-8") as f:
    VERSION = str(json.load(f).get("version", "unknown"))

ENDPOINT = os.environ.get("SPAPI_ENDPOINT", "http://127.0.0.1:18081").rstrip("/")
TOKEN_URL = os.environ.get("LWA_TOKEN_URL", ENDPOINT + "/auth/o2/token")
MARKETPLACE_ID = os.environ.get("SPAPI_MARKETPLACE_ID", "ATVPDKIKX0DER")
DATA_DIR = os.environ.get("SHOP_DATA_DIR", "shop-data")
SYNC_EVERY = float(os.environ.get("SYNC_EVERY", "1"))
FIRST_SYNC_LOOKBACK_S = 600


def log(message):
    print(f"[shop {VERSION}] {message}", file=sys.stderr, flush=True)


def iso(seconds):
    t = datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class SpApi:
    """A minimal SP-API client: an LWA access token, renewed before it expires."""

    def __init__(self):
        try:
            self.credentials = {
                "client_id": os.environ["SPAPI_CLIENT_ID"],
                "client_secret": os.environ["SPAPI_CLIENT_SECRET"],
                "refresh_token": os.environ["SPAPI_REFRESH_TOKEN"],
            }
        except KeyError as e:
            sys.exit(f"app.py: {e.args[0]} is not set (the seller's LWA credentials)")
        self.token = None
        self.expires = 0.0

    def access_token(self):
        if self.token is None or time.time() > self.expires - 60:
            form = urllib.parse.urlencode(dict(grant_type="refresh_token", **self.credentials))
            request = urllib.request.Request(
                TOKEN_URL, data=form.encode(), method="POST",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
            with urllib.request.urlopen(request, timeout=5) as answer:
                token = json.load(answer)
            self.token = token["access_token"]
            self.expires = time.time() + float(token.get("expires_in", 3600))
        return self.token

    def get(self, path, params):
        url = f"{ENDPOINT}{path}?{urllib.parse.urlencode(params)}"
        for attempt in (1, 2):
            request = urllib.request.Request(url, headers={
                "x-amz-access-token": self.access_token(), "Accept": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    return json.load(answer)
            except urllib.error.HTTPError as e:
                if e.code == 403 and attempt == 1:
                    self.token = None  # revoked or expired early: fetch a new one once
                    continue
                raise


class Sync:
    """The sync position and the orders synced, shared with the HTTP handler."""

    def __init__(self):
        self.lock = threading.Lock()
        self.api = SpApi()
        self.orders = {}
        self.position = None
        self.last_sync = None
        self.last_error = None
        self.path = os.path.join(DATA_DIR, "sync-position.json")
        try:
            with open(self.path, encoding="utf-8") as f:
                self.position = parse_time(json.load(f)["last_order_update"])
            log(f"resuming from {iso(self.position)}")
        except FileNotFoundError:
            log("no sync position yet: starting ten minutes back")

    def save(self):
        os.makedirs(DATA_DIR, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"last_order_update": iso(self.position)}, f)
        os.replace(tmp, self.path)

    def once(self):
        after = self.position if self.position is not None else time.time() - FIRST_SYNC_LOOKBACK_S
        query = {"marketplaceIds": MARKETPLACE_ID, "lastUpdatedAfter": iso(after)}
        params = query
        newest, seen = after, 0
        while True:
            page = self.api.get("/orders/2026-01-01/orders", params)
            for order in page["orders"]:
                with self.lock:
                    self.orders[order["orderId"]] = order["fulfillment"]["fulfillmentStatus"]
                newest = max(newest, parse_time(order["lastUpdatedTime"]))
                seen += 1
            token = page.get("pagination", {}).get("nextToken")
            if not token:
                break
            # Each page repeats the query with the token, as the model requires.
            params = dict(query, paginationToken=token)
        with self.lock:
            moved = self.position is None or newest > self.position
            self.position = newest
            self.last_sync = time.time()
            self.last_error = None
        if moved:
            self.save()
            log(f"synced {seen} order update(s), position {iso(newest)}")

    def run(self):
        while True:
            try:
                self.once()
            except Exception as e:  # keep syncing; the next round retries
                with self.lock:
                    self.last_error = f"{type(e).__name__}: {e}"
                log(f"sync failed: {self.last_error}")
            time.sleep(SYNC_EVERY)

    def status(self):
        with self.lock:
            return {
                "last_order_update": None if self.position is None else iso(self.position),
                "orders_synced": len(self.orders),
                "last_sync": None if self.last_sync is None else iso(self.last_sync),
                "last_error": self.last_error,
                "version": VERSION,
            }


SYNC = Sync()


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
        if path == "/status":
            status = SYNC.status()
            code = 200 if status["last_order_update"] else 503
            self._send(code, "application/json", json.dumps(status) + "\n")
        elif path == "/health":
            body = {"status": "ok", "version": VERSION}
            self._send(200, "application/json", json.dumps(body) + "\n")
        elif path == "/":
            self._send(200, "text/plain; charset=utf-8", f"Hello from shop {VERSION}\n")
        else:
            self._send(404, "text/plain; charset=utf-8", "not found\n")

    do_HEAD = do_GET

    def log_message(self, fmt, *args):
        pass  # the agent polls every second; only the sync log matters here


def main():
    port = int(os.environ.get("PORT", "18080"))
    threading.Thread(target=SYNC.run, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    log(f"listening on http://127.0.0.1:{port}, syncing orders from {ENDPOINT}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
