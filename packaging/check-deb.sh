#!/usr/bin/env bash
# Checks a built .deb: every file the package must ship is in it, the config
# is a conffile, the maintainer scripts are there, and nothing lands outside
# the expected trees. Usage: packaging/check-deb.sh target/debian/rollback-agent_*.deb
set -euo pipefail
deb="${1:?usage: check-deb.sh PACKAGE.deb}"
contents="$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')"
fail=0
need() {
    if ! grep -qx -- "$1" <<<"$contents"; then
        echo "check-deb: missing $1" >&2
        fail=1
    fi
}
need /usr/bin/rollbackd
need /usr/bin/rollbackctl
need /etc/rollback-agent/agent.toml
need /usr/lib/sysusers.d/rollback-agent.conf
need /usr/lib/tmpfiles.d/rollback-agent.conf
need /usr/share/man/man1/rollbackd.1.gz
need /usr/share/man/man1/rollbackctl.1.gz
need /usr/share/bash-completion/completions/rollbackctl
need /usr/share/zsh/vendor-completions/_rollbackctl
need /usr/share/fish/vendor_completions.d/rollbackctl.fish
need /usr/lib/rollback-agent/plugins/http-probe.wasm
need /usr/lib/rollback-agent/plugins/webhook-notify.wasm
if ! grep -Eqx '/(usr/)?lib/systemd/system/rollbackd.service' <<<"$contents"; then
    echo "check-deb: missing the unit rollbackd.service" >&2
    fail=1
fi
if grep -v -E '^/(usr/(bin|lib|share)|etc/rollback-agent|lib/systemd)(/|$)|^/(usr|etc|lib)?/?$' <<<"$contents" | grep -q .; then
    echo "check-deb: files outside the expected trees:" >&2
    grep -v -E '^/(usr/(bin|lib|share)|etc/rollback-agent|lib/systemd)(/|$)|^/(usr|etc|lib)?/?$' <<<"$contents" >&2
    fail=1
fi
control="$(mktemp -d)"
trap 'rm -rf "$control"' EXIT
dpkg-deb -e "$deb" "$control"
grep -qx /etc/rollback-agent/agent.toml "$control/conffiles" ||
    { echo "check-deb: agent.toml is not a conffile" >&2; fail=1; }
for script in postinst prerm postrm; do
    [[ -x "$control/$script" ]] || { echo "check-deb: no $script" >&2; fail=1; }
done
grep -q systemd-sysusers "$control/postinst" ||
    { echo "check-deb: postinst does not create the groups" >&2; fail=1; }
[[ $fail -eq 0 ]] || exit 1
echo "check-deb: $deb ships $(grep -c . <<<"$contents") paths, all expected"
dpkg-deb -f "$deb" Package Version Architecture Depends
