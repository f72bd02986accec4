#!/usr/bin/env bash
# The rollback-agent quickstart, end to end, without root:
#   1. deploy shop 1.0.0: healthy, passes its 8 s bake, marked good;
#   2. deploy shop 1.1.0: /health answers 500, the check fails 3 times in a row
#      and the agent rolls back to 1.0.0 on its own;
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
plugin="$repo/target/plugins/http-probe.wasm"
port=18080
url="http://127.0.0.1:$port"

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

cleanup() {
    local status=$?
    if [[ -n "$agent_pid" ]] && kill -0 "$agent_pid" 2>/dev/null; then
        kill -TERM "$agent_pid" 2>/dev/null || true
        # Bounded wait: rollbackd should exit promptly on SIGTERM.
        for _ in $(seq 100); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$agent_pid" 2>/dev/null; then
            echo "demo: rollbackd (pid $agent_pid) ignored SIGTERM for 10 s, killing it" >&2
            kill -KILL "$agent_pid" 2>/dev/null || true
        fi
        wait "$agent_pid" 2>/dev/null || true
    fi
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
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

header "Build"
if [[ -z "${SKIP_BUILD:-}" ]]; then
    (cd "$repo" && cargo build --quiet -p rollback-agent)
    [[ -f "$plugin" ]] || (cd "$repo" && make --no-print-directory plugins)
fi
for f in "$rollbackd" "$rollbackctl" "$plugin"; do
    [[ -e "$f" ]] || die "missing ${f#"$repo/"}: run \`make build plugins\` first"
done
command -v python3 >/dev/null || die "python3 is needed to run the demo app"
echo "rollbackd, rollbackctl and the http-probe plugin are ready"

if python3 -c 'import socket, sys; s = socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$port"; then
    die "something already listens on 127.0.0.1:$port (a leftover demo app?); stop it first"
fi

header "Start rollbackd with a fresh state directory"
rm -rf "$run"
mkdir -p "$run"
show "$rollbackd --config $config &   # log: ${run#"$repo/"}/agent.log"
ROLLBACK_AGENT_LOG="${ROLLBACK_AGENT_LOG:-info}" "$rollbackd" --config "$config" >"$run/agent.log" 2>&1 </dev/null &
agent_pid=$!
for _ in $(seq 100); do
    [[ -S "$socket" ]] && break
    kill -0 "$agent_pid" 2>/dev/null || die "rollbackd exited during start-up"
    sleep 0.1
done
[[ -S "$socket" ]] || die "rollbackd did not create its socket within 10 s"
echo "rollbackd is running (pid $agent_pid), control socket ${socket#"$repo/"}"

header "Deploy shop 1.0.0 and wait for its bake (8 s)"
show "rollbackctl deploy shop $here/releases/1.0.0 --version 1.0.0 --wait"
rc=0; ctl deploy shop "$here/releases/1.0.0" --version 1.0.0 --wait || rc=$?
[[ $rc -eq 0 ]] || die "deploying 1.0.0 exited $rc, expected 0 (passed its bake)"
echo "(exit status $rc: passed its bake)"

header "Status: 1.0.0 is active and good"
show "rollbackctl status shop"
ctl status shop
ctl status shop --json | python3 -c 'import json, sys
a = json.load(sys.stdin)
sys.exit(a.get("active") != "1.0.0" or a.get("last_good") != "1.0.0")' ||
    die "status does not show 1.0.0 as active and last good"

header "Ask the app itself"
show "GET $url/"
fetch / || die "the app does not answer"
show "GET $url/health"
body="$(fetch /health)" || die "the app does not answer"
echo "$body"
[[ "$body" == "HTTP 200 "*'"1.0.0"'* ]] || die "expected 1.0.0 to be healthy"

header "Deploy shop 1.1.0 (a broken build: /health answers 500)"
echo "The check fails once a second; after 3 failures in a row during the bake"
echo "the agent swaps current back to 1.0.0 and restarts the app."
show "rollbackctl deploy shop $here/releases/1.1.0 --version 1.1.0 --wait"
rc=0; ctl deploy shop "$here/releases/1.1.0" --version 1.1.0 --wait || rc=$?
[[ $rc -eq 3 ]] || die "deploying 1.1.0 exited $rc, expected 3 (rolled back)"
echo "(exit status $rc: rolled back automatically)"

header "Status: back on 1.0.0"
show "rollbackctl status shop"
ctl status shop
ctl status shop --json | python3 -c 'import json, sys
a = json.load(sys.stdin)
sys.exit(a.get("active") != "1.0.0")' || die "status does not show 1.0.0 as active after the rollback"
show "GET $url/health"
body="$(fetch /health)" || die "the app does not answer after the rollback"
echo "$body"
[[ "$body" == "HTTP 200 "*'"1.0.0"'* ]] || die "expected the restored 1.0.0 to serve /health"

header "Releases: 1.1.0 is marked failed, current (*) is 1.0.0"
show "rollbackctl releases shop"
ctl releases shop

header "History, newest first"
show "rollbackctl history shop"
ctl history shop

header "The demo went as expected"
echo "Files to look at: ${run#"$repo/"}/agent.log (agent), ${run#"$repo/"}/app.log (app),"
echo "${run#"$repo/"}/shop/ (releases/ and the current symlink). rollbackd and the app are stopped now."
