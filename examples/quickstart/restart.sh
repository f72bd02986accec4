#!/usr/bin/env bash
# Restart command of the quickstart's `shop` app (see agent.toml).
#
# rollbackd runs this after every activation (deploy or rollback), with the
# app root as working directory and these variables set:
#   ROLLBACK_APP      the app's name ("shop")
#   ROLLBACK_VERSION  the release `current` now points at
#   ROLLBACK_ROOT     the app root (holding releases/ and current)
# Exit 0 when the new release is up; any other status (or running past
# restart_timeout) makes the agent treat the release as failed to start.
#
# It stops the previous app process (its pid is in ../app.pid next to the app
# root), starts `python3 $ROLLBACK_ROOT/current/app.py` detached from the
# agent, and waits until the port answers. On a real host this would be
# `systemctl restart shop.service` instead.
#
# The app keeps its sync position in ../shop-data/, outside the releases, so
# every release carries on from where the previous one stopped. Its SP-API
# credentials (SPAPI_*) are passed through from the agent's environment by
# `restart_env` in agent.toml (demo.sh sets them); a real unit would read them
# from its own EnvironmentFile.
set -euo pipefail

: "${ROLLBACK_ROOT:?ROLLBACK_ROOT is not set (this script is run by rollbackd)}"
app="${ROLLBACK_APP:-shop}"
version="${ROLLBACK_VERSION:-?}"
port="${PORT:-18080}"
run_dir="$(cd "$ROLLBACK_ROOT/.." && pwd)"
pid_file="$run_dir/app.pid"
log_file="$run_dir/app.log"
app_py="$ROLLBACK_ROOT/current/app.py"

say() { echo "restart.sh [$app $version]: $*"; }

# The command line of a process, empty if it does not exist.
cmdline_of() {
    if [[ -r "/proc/$1/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
    else
        ps -o args= -p "$1" 2>/dev/null || true
    fi
}

# Whether a process exists and is not a zombie (an exited child that its new
# parent, often PID 1, has not reaped yet: it no longer holds the port).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local state=""
    if [[ -r "/proc/$1/stat" ]]; then
        state="$(sed 's/^.*) \(.\).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)"
    else
        state="$(ps -o stat= -p "$1" 2>/dev/null || true)"
    fi
    [[ "$state" != Z* ]]
}

# 1. Stop the previous process, but only if the pid really is our app: a stale
#    pid file may name a pid the system has since given to something else.
if [[ -f "$pid_file" ]]; then
    old="$(tr -dc '0-9' <"$pid_file")"
    if [[ -n "$old" ]] && alive "$old"; then
        if [[ "$(cmdline_of "$old")" == *python*"$app_py"* ]]; then
            say "stopping previous app (pid $old)"
            kill -TERM "$old" 2>/dev/null || true
            for _ in $(seq 50); do
                alive "$old" || break
                sleep 0.1
            done
            if alive "$old"; then
                say "pid $old ignored SIGTERM, sending SIGKILL"
                kill -KILL "$old" 2>/dev/null || true
                sleep 0.2
            fi
        else
            say "pid file names pid $old, which is not our app; leaving it alone"
        fi
    fi
    rm -f "$pid_file"
fi

# 2. Start the active release in the background, fully detached: every fd is
#    redirected, because rollbackd reads this script's stdout and stderr to the
#    end and would otherwise wait for the app to exit. setsid (where available)
#    also keeps it out of the agent's process group.
[[ -f "$app_py" ]] || { say "no $app_py: is current a release of this app?"; exit 1; }
detach=()
if command -v setsid >/dev/null 2>&1; then detach=(setsid); fi
echo "--- $(date '+%F %T') starting $app $version" >>"$log_file"
PORT="$port" SHOP_DATA_DIR="$run_dir/shop-data" nohup "${detach[@]}" python3 "$app_py" >>"$log_file" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pid_file"
say "started pid $pid, log $log_file"

# 3. Wait (at most ~5 s) until the port answers HTTP. Any status counts: judging
#    /health is the health check's job, not the restart command's.
deadline=$((SECONDS + 5))
while ((SECONDS <= deadline)); do
    if ! alive "$pid"; then
        say "the app exited during start-up; its output (from $log_file):"
        # Only this start's lines: everything after the last "---" marker.
        awk '/^--- /{n=0; delete l; next} {l[++n]=$0} END{s=n>8?n-7:1; for(i=s;i<=n;i++) print "  " l[i]}' "$log_file"
        rm -f "$pid_file"
        exit 1
    fi
    if python3 - "$port" <<'PY' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=0.5)
except urllib.error.HTTPError:
    pass  # an HTTP error status still means the server answers
PY
    then
        # Something answers; make sure it is our process and not a stray
        # server that kept the port (ours would then have died on bind).
        if alive "$pid"; then
            say "listening on 127.0.0.1:$port"
            exit 0
        fi
        continue
    fi
    sleep 0.1
done
say "the app did not answer on 127.0.0.1:$port within 5 s; see $log_file"
exit 1
