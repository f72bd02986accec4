#!/usr/bin/env bash
# The rollback-agent quickstart, end to end, without root. `shop` is the
# order-sync service of an Amazon seller; a local fake of the Selling Partner
# API (sp_api_fake.py) plays Amazon, with a new order every 2 seconds.
#   1. deploy shop 1.0.0: it syncs the orders, both checks pass its 20 s bake,
#      it is marked good;
#   2. deploy shop 1.1.0: a refactor broke its sync loop, yet /health still
#      answers 200. The order-sync check sees the orders pile up, fails 3 times
#      in a row once the lag passes 8 s, and the agent rolls back to 1.0.0;
#   3. show status, releases and history.
# Exits 0 when the story went as expected, non-zero otherwise.
# Usage: examples/quickstart/demo.sh   (from any directory; `make demo` builds first)
#        SKIP_BUILD=1 examples/quickstart/demo.sh   to skip the build step.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
run="$here/run"
config="$here/agent.toml"
socket="$run/control.sock"
rollbackd="$repo/target/debug/rollbackd"
rollbackctl="$repo/target/debug/rollbackctl"
plugins=("$repo/target/plugins/http-probe.wasm" "$repo/target/plugins/order-sync-lag.wasm")
port=18080
url="http://127.0.0.1:$port"
fake_port=18081

# Made-up Login with Amazon credentials: the fake accepts exactly these, the
# agent hands them to the order-sync check (env: secrets in agent.toml) and the
# app reads them from the environment restart.sh passes on (restart_env).
export SPAPI_CLIENT_ID="amzn1.application-oa2-client.quickstart-demo"
export SPAPI_CLIENT_SECRET="quickstart-demo-client-secret"
export SPAPI_REFRESH_TOKEN="Atzr|quickstart-demo-refresh-token"
export SPAPI_ENDPOINT="http://127.0.0.1:$fake_port"

bold=""; reset=""
if [[ -t 1 ]]; then bold=$'\e[1m'; reset=$'\e[0m'; fi
header() { printf '\n%s==> %s%s\n' "$bold" "$*" "$reset"; }
show() { printf '$ %s\n' "$*" | sed "s|$repo/||g"; }
die() {
    printf '\ndemo: FAILED: %s\n' "$*" >&2
    if [[ -n "$agent_pid" && -f "$run/agent.log" ]]; then
        printf 'demo: last lines of %s:\n' "${run#"$repo/"}/agent.log" >&2
        tail -n 20 "$run/agent.log" | sed 's/^/  /' >&2
    fi
    exit 1
}
agent_pid=""   # set once this script has started rollbackd
fake_pid=""    # set once this script has started the SP-API fake
ctl() { "$rollbackctl" --socket "$socket" "$@"; }

# GET a path of the app and print "HTTP <code> <body>", without curl.
fetch() {
    python3 - "$url$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=2)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
except OSError as e:
    sys.exit(f"no answer from {sys.argv[1]}: {e}")
print(f"HTTP {code} {body.decode().strip()}")
PY
}

# Whether something accepts connections on 127.0.0.1:$1.
listening() {
    python3 -c 'import socket, sys; s = socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"
}

# Stops a process this script started: SIGTERM, then SIGKILL after 10 s.
stop() {
    local pid=$1 what=$2
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: $what (pid $pid) ignored SIGTERM for 10 s, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    if [[ -n "$agent_pid" ]]; then stop "$agent_pid" rollbackd; fi
    # The app was started by restart.sh; stop it the same careful way.
    if [[ -f "$run/app.pid" ]]; then
        local pid
        pid="$(tr -dc '0-9' <"$run/app.pid")"
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
            [[ "$(ps -o args= -p "$pid" 2>/dev/null || true)" == *python*"$run/shop/current/app.py"* ]]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
        rm -f "$run/app.pid"
    fi
    if [[ -n "$fake_pid" ]]; then stop "$fake_pid" "the SP-API fake"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

header "Build"
if [[ -z "${SKIP_BUILD:-}" ]]; then
    (cd "$repo" && cargo build --quiet -p rollback-agent)
    for f in "${plugins[@]}"; do
        [[ -f "$f" ]] || { (cd "$repo" && make --no-print-directory plugins); break; }
    done
fi
for f in "$rollbackd" "$rollbackctl" "${plugins[@]}"; do
    [[ -e "$f" ]] || die "missing ${f#"$repo/"}: run \`make build plugins\` first"
done
command -v python3 >/dev/null || die "python3 is needed to run the demo app and the SP-API fake"
echo "rollbackd, rollbackctl and the http-probe and order-sync-lag plugins are ready"

for p in "$port" "$fake_port"; do
    if listening "$p"; then
        die "something already listens on 127.0.0.1:$p (a leftover demo?); stop it first"
    fi
done

rm -rf "$run"
mkdir -p "$run"

header "Start the Amazon SP-API fake on 127.0.0.1:$fake_port (a new order every 2 s)"
show "python3 $here/sp_api_fake.py $fake_port --log ${run#"$repo/"}/sp-api.log &"
python3 "$here/sp_api_fake.py" "$fake_port" --log "$run/sp-api.log" >"$run/sp-api.out" 2>&1 </dev/null &
fake_pid=$!
deadline=$((SECONDS + 15))
until listening "$fake_port"; do
    kill -0 "$fake_pid" 2>/dev/null || die "the SP-API fake exited: $(cat "$run/sp-api.out")"
    ((SECONDS < deadline)) || die "the SP-API fake did not listen on 127.0.0.1:$fake_port within 15 s"
    sleep 0.1
done
echo "the fake is running (pid $fake_pid): LWA token endpoint and Orders API 2026-01-01 searchOrders"

header "Start rollbackd with a fresh state directory"
show "$rollbackd --config $config &   # log: ${run#"$repo/"}/agent.log"
ROLLBACK_AGENT_LOG="${ROLLBACK_AGENT_LOG:-info}" "$rollbackd" --config "$config" >"$run/agent.log" 2>&1 </dev/null &
agent_pid=$!
# Generous: the agent compiles both plugins before it opens its socket.
deadline=$((SECONDS + 60))
until [[ -S "$socket" ]]; do
    kill -0 "$agent_pid" 2>/dev/null || die "rollbackd exited during start-up"
    ((SECONDS < deadline)) || die "rollbackd did not create its socket within 60 s"
    sleep 0.1
done
echo "rollbackd is running (pid $agent_pid), control socket ${socket#"$repo/"}"

header "Deploy shop 1.0.0 and wait for its bake (20 s)"
echo "It syncs the seller's orders every second; the order-sync check compares its"
echo "position with the orders at the marketplace."
show "rollbackctl deploy shop $here/releases/1.0.0 --version 1.0.0 --wait"
rc=0; ctl deploy shop "$here/releases/1.0.0" --version 1.0.0 --wait || rc=$?
[[ $rc -eq 0 ]] || die "deploying 1.0.0 exited $rc, expected 0 (passed its bake)"
echo "(exit status $rc: passed its bake)"

header "Status: 1.0.0 is active and good, both checks pass"
show "rollbackctl status shop"
ctl status shop
ctl status shop --json | python3 -c 'import json, sys
a = json.load(sys.stdin)
sys.exit(a.get("active") != "1.0.0" or a.get("last_good") != "1.0.0")' ||
    die "status does not show 1.0.0 as active and last good"

header "Ask the app itself"
show "GET $url/health"
body="$(fetch /health)" || die "the app does not answer"
echo "$body"
[[ "$body" == "HTTP 200 "*'"1.0.0"'* ]] || die "expected 1.0.0 to be healthy"
show "GET $url/status"
body="$(fetch /status)" || die "the app does not answer"
echo "$body"
[[ "$body" == "HTTP 200 "*'"last_order_update": "'* ]] || die "expected 1.0.0 to report its sync position"

header "Deploy shop 1.1.0 (a refactor broke the sync; /health still answers 200)"
echo "1.1.0 reads payload.orders instead of payload.Orders: it never sees an order,"
echo "so its position stands still while new orders arrive. The health probe keeps"
echo "passing; the order-sync check fails once the lag passes 8 s, and after 3"
echo "failures in a row the agent swaps current back to 1.0.0 and restarts the app."
show "rollbackctl deploy shop $here/releases/1.1.0 --version 1.1.0 --wait"
rc=0; ctl deploy shop "$here/releases/1.1.0" --version 1.1.0 --wait || rc=$?
[[ $rc -eq 3 ]] || die "deploying 1.1.0 exited $rc, expected 3 (rolled back)"
echo "(exit status $rc: rolled back automatically)"
[[ "$(readlink "$run/shop/current")" == releases/1.0.0 || "$(readlink "$run/shop/current")" == */releases/1.0.0 ]] ||
    die "current points at $(readlink "$run/shop/current"), expected releases/1.0.0"

header "Status: back on 1.0.0, which catches up at once"
# The restored 1.0.0 syncs the orders 1.1.0 missed in its first round; wait
# for the check to confirm it (bounded).
deadline=$((SECONDS + 30))
until ctl status shop --json | python3 -c 'import json, sys
a = json.load(sys.stdin)
c = a.get("checks", {}).get("order-sync", {})
sys.exit(a.get("active") != "1.0.0" or c.get("outcome") != "pass" or c.get("runs", 0) < 1)'; do
    ((SECONDS < deadline)) || die "the order-sync check did not pass again on 1.0.0 within 30 s"
    sleep 0.5
done
show "rollbackctl status shop"
ctl status shop
show "GET $url/status"
body="$(fetch /status)" || die "the app does not answer after the rollback"
echo "$body"
[[ "$body" == "HTTP 200 "*'"version": "1.0.0"'* ]] || die "expected the restored 1.0.0 to serve /status"

header "Releases: 1.1.0 is marked failed, current (*) is 1.0.0"
show "rollbackctl releases shop"
ctl releases shop

header "History, newest first"
show "rollbackctl history shop"
ctl history shop
ctl history shop --json | python3 -c 'import json, sys
events = json.load(sys.stdin)["events"]
def find(kind, **want):
    return [e for e in events if e.get("kind") == kind and all(e.get(k) == v for k, v in want.items())]
problems = []
if not find("check-failed", version="1.1.0", check="order-sync"):
    problems.append("no check-failed event of the order-sync check for 1.1.0")
if not any("order-sync" in (e.get("reason") or "") for e in find("rolled-back", version="1.1.0")):
    problems.append("no rolled-back event of 1.1.0 naming the order-sync check")
if find("check-failed", check="health"):
    problems.append("the health check failed, but /health was meant to stay 200")
sys.exit("; ".join(problems) or None)' || die "the history does not tell the expected story"

header "The demo went as expected"
echo "Files to look at: ${run#"$repo/"}/agent.log (agent), ${run#"$repo/"}/app.log (app),"
echo "${run#"$repo/"}/sp-api.log (every request to the fake), ${run#"$repo/"}/shop/ (releases/ and"
echo "the current symlink). rollbackd, the app and the fake are stopped now."
