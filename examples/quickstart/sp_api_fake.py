#!/usr/bin/env python3
"""A local fake of Amazon's Selling Partner API for the quickstart (Python 3 stdlib only).

It serves, on 127.0.0.1 only:

  POST /auth/o2/token     Login with Amazon: the refresh-token grant (form body
                          grant_type, refresh_token, client_id, client_secret)
  GET  /orders/2026-01-01/orders  Orders API 2026-01-01 searchOrders:
                          marketplaceIds with lastUpdatedAfter or createdAfter
                          (optional Before bounds, maxResultsPerPage), then
                          paginationToken paging with the query repeated
  GET  /orders/v0/orders  Orders v0 getOrders: MarketplaceIds with
                          LastUpdatedAfter or CreatedAfter (optional
                          LastUpdatedBefore / CreatedBefore, MaxResultsPerPage),
                          then NextToken paging (each page repeats the
                          query); needs x-amz-access-token

Answers follow the Orders v0 model (tests/api-models/amazon-sp-api/ordersV0.json)
and carry an x-amzn-RequestId header.

The seller's orders run on a clock: one new order every --order-every seconds
(default 2), starting an hour before the fake did. Each order is `Pending` when
placed, `Unshipped` 5 s later and `Shipped` 2 min later, and every change moves
its LastUpdateDate. The marketplace never stands still, so an app that stops
syncing falls behind within seconds.

The credentials it accepts are the ones in its environment: SPAPI_CLIENT_ID,
SPAPI_CLIENT_SECRET and SPAPI_REFRESH_TOKEN (demo.sh sets made-up values). It
issues access tokens valid for an hour.

Not modelled: quotas (the real getOrders allows about one request a minute),
other marketplaces than the seller's one (ATVPDKIKX0DER), filters other than
the dates.

Usage: sp_api_fake.py PORT [--log FILE] [--order-every SECONDS]
  PORT 0 picks a free port. The first line on stdout is
  "sp_api_fake: listening on http://127.0.0.1:PORT". One line per request goes
  to --log (default: stderr). It exits on SIGTERM or SIGINT, and when the
  process that started it exits.
"""

import argparse
import base64
import collections
import datetime
import json
import math
import os
import secrets
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKETPLACE_ID = "ATVPDKIKX0DER"
HISTORY_S = 3600
PENDING_FOR_S = 5
SHIPS_AFTER_S = 120
TOKEN_LIFETIME_S = 3600
MAX_PAGE = 100
# Cursors of unfinished page walks; old ones are dropped first.
MAX_CURSORS = 1000


def iso(seconds):
    """RFC 3339 in UTC, whole seconds, like SP-API's dates."""
    t = datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    """An ISO 8601 date-time with an offset or `Z`, as Unix seconds; None if garbled."""
    try:
        t = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        return None
    return t.timestamp()


class Clock:
    """The seller's orders: order k is placed at epoch + k * every seconds."""

    def __init__(self, every, started):
        self.every = every
        self.epoch = (int(started) - HISTORY_S) // every * every

    def placed(self, k):
        return self.epoch + k * self.every

    def order(self, k, now):
        """Order k as SP-API shows it at `now`."""
        placed = self.placed(k)
        if now >= placed + SHIPS_AFTER_S:
            status, updated = "Shipped", placed + SHIPS_AFTER_S
        elif now >= placed + PENDING_FOR_S:
            status, updated = "Unshipped", placed + PENDING_FOR_S
        else:
            status, updated = "Pending", placed
        shipped = status == "Shipped"
        return {
            "AmazonOrderId": f"{111 + k % 3}-{3000000 + k * 7:07d}-{(k * 7919 + 1234567) % 10000000:07d}",
            "SellerOrderId": f"SHOP-{100000 + k}",
            "PurchaseDate": iso(placed),
            "LastUpdateDate": iso(updated),
            "OrderStatus": status,
            "FulfillmentChannel": "MFN",
            "SalesChannel": "Amazon.com",
            "ShipServiceLevel": "Std US D2D Dom",
            "OrderTotal": {"CurrencyCode": "USD", "Amount": f"{9.99 + (k * 37) % 90:.2f}"},
            "NumberOfItemsShipped": 1 if shipped else 0,
            "NumberOfItemsUnshipped": 0 if shipped else 1,
            "PaymentMethod": "Other",
            "PaymentMethodDetails": ["Standard"],
            "MarketplaceId": MARKETPLACE_ID,
            "ShipmentServiceLevelCategory": "Standard",
            "OrderType": "StandardOrder",
            "EarliestShipDate": iso(placed + 86400),
            "LatestShipDate": iso(placed + 2 * 86400),
            "IsBusinessOrder": False,
            "IsPrime": k % 3 == 0,
            "IsPremiumOrder": False,
            "IsGlobalExpressEnabled": False,
            "IsReplacementOrder": False,
            "IsSoldByAB": False,
            "IsISPU": False,
            "IsAccessPointOrder": False,
            "HasRegulatedItems": False,
        }, updated

    def select(self, field, lo, hi, now):
        """The orders whose `field` time lies in [lo, hi] at `now`, oldest first."""
        # An order's LastUpdateDate is at most SHIPS_AFTER_S after it was placed.
        earliest = lo - (SHIPS_AFTER_S if field == "updated" else 0)
        first = max(0, math.ceil((earliest - self.epoch) / self.every))
        last = math.floor((min(hi, now) - self.epoch) / self.every)
        found = []
        for k in range(first, last + 1):
            order, updated = self.order(k, now)
            t = updated if field == "updated" else self.placed(k)
            if lo <= t <= hi:
                found.append((t, k, order))
        found.sort(key=lambda e: (e[0], e[1]))
        return [order for _, _, order in found]


class Fake:
    """The shared state: issued tokens and open cursors."""

    def __init__(self, clock, credentials, log):
        self.clock = clock
        self.credentials = credentials
        self.log_file = log
        self.lock = threading.Lock()
        self.tokens = {}
        self.cursors = collections.OrderedDict()

    def log(self, line):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        with self.lock:
            self.log_file.write(f"{stamp} {line}\n")
            self.log_file.flush()

    def issue_token(self, now):
        token = "Atza|" + base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")
        with self.lock:
            # Forget expired tokens so the table stays small.
            for t in [t for t, exp in self.tokens.items() if exp <= now]:
                del self.tokens[t]
            self.tokens[token] = now + TOKEN_LIFETIME_S
        return token

    def token_state(self, token, now):
        if not token:
            return "missing"
        with self.lock:
            expires = self.tokens.get(token)
        if expires is None:
            return "unknown"
        return "live" if now < expires else "expired"

    def save_cursor(self, cursor):
        token = base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()
        with self.lock:
            self.cursors[token] = cursor
            while len(self.cursors) > MAX_CURSORS:
                self.cursors.popitem(last=False)
        return token

    def load_cursor(self, token):
        with self.lock:
            return self.cursors.get(token)


def sp_error(status, code, message, details=""):
    return status, {"errors": [{"code": code, "message": message, "details": details}]}


def invalid_input(message):
    return sp_error(400, "InvalidInput", message)


def lwa_token(fake, form, now):
    """Login with Amazon, refresh-token grant."""

    def oauth(status, error, description):
        return status, {"error": error, "error_description": description}

    def field(name):
        values = form.get(name)
        return values[0] if values and values[0] else None

    grant = field("grant_type")
    if grant is None:
        return oauth(400, "invalid_request", "The request is missing a required parameter : grant_type")
    if grant != "refresh_token":
        return oauth(400, "unsupported_grant_type", "The authorization grant type is not supported by the authorization server")
    for name in ("refresh_token", "client_id", "client_secret"):
        if field(name) is None:
            return oauth(400, "invalid_request", f"The request is missing a required parameter : {name}")
    client_id, client_secret, refresh_token = fake.credentials
    if field("client_id") != client_id or field("client_secret") != client_secret:
        return oauth(401, "invalid_client", "Client authentication failed")
    if field("refresh_token") != refresh_token:
        return oauth(400, "invalid_grant", "The request has an invalid grant parameter : refresh_token")
    return 200, {
        "access_token": fake.issue_token(now),
        "refresh_token": refresh_token,
        "token_type": "bearer",
        "expires_in": TOKEN_LIFETIME_S,
    }


# How each orders operation spells its window and page size.
V0_NAMES = ("CreatedAfter", "CreatedBefore", "LastUpdatedAfter", "LastUpdatedBefore", "MaxResultsPerPage")
V2026_NAMES = ("createdAfter", "createdBefore", "lastUpdatedAfter", "lastUpdatedBefore", "maxResultsPerPage")


def search_window(param, names, now):
    """The window of an orders search as both SP-API models document it:
    (field, lo, hi, page size), or the error message. Exactly one `After`
    bound, no mix of created and updated bounds, a `Before` bound after the
    `After` one and at least two minutes old, a page size of 1 to 100."""
    created_after, created_before, updated_after, updated_before, size_name = names
    times = {}
    for name in names[:4]:
        text = param(name)
        if text is not None:
            times[name] = parse_time(text)
            if times[name] is None:
                return f"{name} is not a valid ISO 8601 date: {text}"
    created, updated = created_after in times, updated_after in times
    if not created and not updated:
        return f"Either {created_after} or {updated_after} must be specified."
    if created and updated:
        return f"{created_after} and {updated_after} cannot both be set."
    if created and updated_before in times or updated and created_before in times:
        return "Created and updated filters cannot be combined."
    after, before = (updated_after, updated_before) if updated else (created_after, created_before)
    lo, hi = times[after], times.get(before)
    if hi is not None and (hi < lo or hi > now - 120):
        return f"{before} must be after {after} and at least two minutes before now."
    size = param(size_name) or str(MAX_PAGE)
    if not size.isdigit() or not 1 <= int(size) <= MAX_PAGE:
        return f"{size_name} must be between 1 and 100."
    return ("updated" if updated else "created", lo, now if hi is None else hi, int(size))


def get_orders(fake, query, now):
    """Orders v0 getOrders. Returns (status, body, note for the log)."""

    def param(name):
        values = query.get(name)
        return values[0] if values and values[0] != "" else None

    ids = param("MarketplaceIds")
    if ids is None:
        return (*invalid_input("Missing required parameter 'MarketplaceIds'."), "")
    ids = ids.split(",")
    if len(ids) > 50:
        return (*invalid_input("MarketplaceIds accepts at most 50 values."), "")
    for mid in ids:
        if mid != MARKETPLACE_ID:
            return (*invalid_input(f"Invalid MarketplaceIds: {mid}"), "")

    # The model requires CreatedAfter or LastUpdatedAfter on every call, one
    # with NextToken included.
    if not param("CreatedAfter") and not param("LastUpdatedAfter"):
        return (*invalid_input("Either CreatedAfter or LastUpdatedAfter must be specified."), "")
    next_token = param("NextToken")
    if next_token is not None:
        cursor = fake.load_cursor(next_token)
        if cursor is None:
            return (*invalid_input("Invalid NextToken."), "")
    else:
        window = search_window(param, V0_NAMES, now)
        if isinstance(window, str):
            return (*invalid_input(window), "")
        field, lo, hi, size = window
        # The page walk sees the marketplace as it was at its first page.
        cursor = {"field": field, "lo": lo, "hi": hi, "as_of": now, "size": size, "offset": 0}

    orders = fake.clock.select(cursor["field"], cursor["lo"], cursor["hi"], cursor["as_of"])
    start, size = cursor["offset"], cursor["size"]
    page = orders[start:start + size]
    payload = {"Orders": page}
    bound = "LastUpdatedBefore" if cursor["field"] == "updated" else "CreatedBefore"
    payload[bound] = iso(cursor["hi"])
    note = f"{len(page)} of {len(orders)} orders"
    if start + size < len(orders):
        payload["NextToken"] = fake.save_cursor(dict(cursor, offset=start + size))
        note += ", NextToken"
    return 200, {"payload": payload}, note


# Orders API 2026-01-01 spells statuses and fulfilment its own way.
STATUS_2026 = {"Pending": "PENDING", "Unshipped": "UNSHIPPED", "Shipped": "SHIPPED"}


def order_2026(order):
    """A v0 order in the Orders API 2026-01-01 shape (its required fields
    and the fulfilment a check reads)."""
    return {
        "orderId": order["AmazonOrderId"],
        "orderAliases": [{"aliasId": order["SellerOrderId"], "aliasType": "SELLER_ORDER_ID"}],
        "createdTime": order["PurchaseDate"],
        "lastUpdatedTime": order["LastUpdateDate"],
        "salesChannel": {"channelName": "AMAZON", "marketplaceId": MARKETPLACE_ID, "marketplaceName": "Amazon.com"},
        "orderItems": [],
        "fulfillment": {
            "fulfillmentStatus": STATUS_2026[order["OrderStatus"]],
            "fulfilledBy": "MERCHANT",
        },
    }


def search_orders(fake, query, now):
    """searchOrders as the 2026-01-01 model documents it: exactly one of
    createdAfter and lastUpdatedAfter; a paginationToken only with every
    other parameter as on the request that produced it (maxResultsPerPage
    and includedData excepted)."""

    def param(name):
        values = query.get(name)
        return values[-1] if values else None

    ids = param("marketplaceIds")
    if ids is not None:
        ids = ids.split(",")
        if len(ids) > 50:
            return (*invalid_input("marketplaceIds accepts at most 50 values."), "")
        for mid in ids:
            if mid != MARKETPLACE_ID:
                return (*invalid_input(f"Invalid marketplaceIds: {mid}"), "")
    bound = sorted(
        (k, v[-1]) for k, v in query.items()
        if k not in ("maxResultsPerPage", "includedData", "paginationToken")
    )
    window = search_window(param, V2026_NAMES, now)
    if isinstance(window, str):
        return (*invalid_input(window), "")
    field, lo, hi, size = window
    token = param("paginationToken")
    if token is not None:
        cursor = fake.load_cursor(token)
        if cursor is None:
            return (*invalid_input("Invalid paginationToken."), "")
        if cursor.get("bound") != [list(p) for p in bound]:
            return (*invalid_input("All parameters must be the same as in the request that produced the paginationToken."), "")
        cursor = dict(cursor, size=size)
    else:
        cursor = {
            "field": field,
            "lo": lo,
            "hi": hi,
            "as_of": now,
            "size": size,
            "offset": 0,
            "bound": [list(p) for p in bound],
        }
    orders = fake.clock.select(cursor["field"], cursor["lo"], cursor["hi"], cursor["as_of"])
    start, size = cursor["offset"], cursor["size"]
    page = orders[start:start + size]
    body = {"orders": [order_2026(o) for o in page]}
    body["lastUpdatedBefore" if cursor["field"] == "updated" else "createdBefore"] = iso(cursor["hi"])
    note = f"{len(page)} of {len(orders)} orders"
    if start + size < len(orders):
        body["pagination"] = {"nextToken": fake.save_cursor(dict(cursor, offset=start + size))}
        note += ", nextToken"
    return 200, body, note


class Handler(BaseHTTPRequestHandler):
    server_version = "sp-api-fake"
    sys_version = ""

    def answer(self, status, body, note=""):
        data = (json.dumps(body) + "\n").encode("utf-8")
        request_id = str(uuid.uuid4())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", request_id)
        if self.path.startswith("/orders/v0/"):
            self.send_header("x-amzn-RateLimit-Limit", "0.0167")
        elif self.path.startswith("/orders/2026-01-01/"):
            self.send_header("x-amzn-RateLimit-Limit", "0.0056")
        self.end_headers()
        self.wfile.write(data)
        if status >= 400:
            first = body.get("errors", [{}])[0] if "errors" in body else body
            note = first.get("code") or first.get("error") or ""
        # Only the method and path with its query: no headers, no body (secrets).
        self.server.fake.log(f"{self.command} {self.path} -> {status}{' (' + note + ')' if note else ''} {request_id}")

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 65536)).decode("utf-8", "replace")
        if path != "/auth/o2/token":
            return self.answer(*sp_error(404, "NotFound", "The resource specified does not exist."))
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return self.answer(400, {
                "error": "invalid_request",
                "error_description": "The Content-Type must be application/x-www-form-urlencoded",
            })
        form = urllib.parse.parse_qs(body, keep_blank_values=True)
        status, answer = lwa_token(self.server.fake, form, time.time())
        self.answer(status, answer, "token issued" if status == 200 else "")

    def do_GET(self):
        fake = self.server.fake
        url = urllib.parse.urlsplit(self.path)
        if url.path not in ("/orders/v0/orders", "/orders/2026-01-01/orders"):
            return self.answer(*sp_error(404, "NotFound", "The resource specified does not exist."))
        now = time.time()
        state = fake.token_state(self.headers.get("x-amz-access-token"), now)
        if state != "live":
            details = {
                "missing": "",
                "unknown": "The access token you provided is revoked, malformed or invalid.",
                "expired": "The access token you provided has expired.",
            }[state]
            return self.answer(*sp_error(403, "Unauthorized", "Access to requested resource is denied.", details))
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if url.path == "/orders/v0/orders":
            self.answer(*get_orders(fake, query, now))
        else:
            self.answer(*search_orders(fake, query, now))

    def log_message(self, fmt, *args):
        pass  # answer() writes the request log


def main():
    parser = argparse.ArgumentParser(description="A local fake of Amazon SP-API (LWA token + Orders v0).")
    parser.add_argument("port", type=int, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--log", help="append one line per request to this file (default: stderr)")
    parser.add_argument("--order-every", type=int, default=2, metavar="SECONDS",
                        help="seconds between two new orders (default 2)")
    args = parser.parse_args()
    if args.order_every < 1:
        parser.error("--order-every must be at least 1")
    credentials = tuple(os.environ.get(name, "") for name in
                        ("SPAPI_CLIENT_ID", "SPAPI_CLIENT_SECRET", "SPAPI_REFRESH_TOKEN"))
    if not all(credentials):
        parser.error("set SPAPI_CLIENT_ID, SPAPI_CLIENT_SECRET and SPAPI_REFRESH_TOKEN: the credentials to accept")

    log = open(args.log, "a", encoding="utf-8") if args.log else sys.stderr
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.fake = Fake(Clock(args.order_every, time.time()), credentials, log)

    # shutdown() blocks until serve_forever() returns, so never call it on the serving thread.
    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    # A fake left behind by a killed demo would hold the port: leave with the parent.
    parent = os.getppid()

    def watch_parent():
        while os.getppid() == parent:
            time.sleep(0.5)
        stop()

    threading.Thread(target=watch_parent, daemon=True).start()

    port = server.server_address[1]
    print(f"sp_api_fake: listening on http://127.0.0.1:{port}", flush=True)
    server.fake.log(f"listening on http://127.0.0.1:{port}, a new order every {args.order_every} s")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        server.fake.log("stopped")


if __name__ == "__main__":
    main()
