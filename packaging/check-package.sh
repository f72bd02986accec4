#!/usr/bin/env bash
# Checks a built package (.deb or .rpm): every file it must ship is in it,
# the config is a conffile, the install scripts create the groups, and
# nothing lands outside the expected trees.
# Usage: packaging/check-package.sh target/debian/rollback-agent_*.deb
#        packaging/check-package.sh target/generate-rpm/rollback-agent-*.rpm
set -euo pipefail
pkg="${1:?usage: check-package.sh PACKAGE.deb|PACKAGE.rpm}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
case "$pkg" in
*.deb)
    contents="$(dpkg-deb -c "$pkg" | awk '{print $6}' | sed 's|^\./|/|')"
    dpkg-deb -e "$pkg" "$work/control"
    conffiles="$(cat "$work/control/conffiles")"
    scripts="$(cat "$work/control/postinst")"
    for script in postinst prerm postrm; do
        [[ -x "$work/control/$script" ]] || { echo "check-package: no $script" >&2; exit 1; }
    done
    ;;
*.rpm)
    contents="$(rpm -qlp "$pkg")"
    conffiles="$(rpm -qp --configfiles "$pkg")"
    scripts="$(rpm -qp --scripts "$pkg")"
    ;;
*)
    echo "check-package: $pkg is neither a .deb nor an .rpm" >&2
    exit 2
    ;;
esac
fail=0
need() {
    if ! grep -Eqx -- "$1" <<<"$contents"; then
        echo "check-package: missing $1" >&2
        fail=1
    fi
}
need /usr/bin/rollbackd
need /usr/bin/rollbackctl
need /etc/rollback-agent/agent.toml
need '/(usr/)?lib/systemd/system/rollbackd.service'
need /usr/lib/sysusers.d/rollback-agent.conf
need /usr/lib/tmpfiles.d/rollback-agent.conf
need /usr/share/man/man1/rollbackd.1.gz
need /usr/share/man/man1/rollbackctl.1.gz
need /usr/share/bash-completion/completions/rollbackctl
need '/usr/share/zsh/(vendor-completions|site-functions)/_rollbackctl'
need /usr/share/fish/vendor_completions.d/rollbackctl.fish
need /usr/lib/rollback-agent/plugins/http-probe.wasm
need /usr/lib/rollback-agent/plugins/webhook-notify.wasm
need /usr/lib/rollback-agent/plugins/order-sync-lag.wasm
expected='^/(usr/(bin|lib|share)|etc/rollback-agent|lib/systemd)(/|$)|^/(usr|etc|lib)?/?$'
if grep -v -E "$expected" <<<"$contents" | grep -q .; then
    echo "check-package: files outside the expected trees:" >&2
    grep -v -E "$expected" <<<"$contents" >&2
    fail=1
fi
grep -qx /etc/rollback-agent/agent.toml <<<"$conffiles" ||
    { echo "check-package: agent.toml is not a conffile" >&2; fail=1; }
grep -q systemd-sysusers <<<"$scripts" ||
    { echo "check-package: the install script does not create the groups" >&2; fail=1; }
[[ $fail -eq 0 ]] || exit 1
echo "check-package: $pkg ships $(grep -c . <<<"$contents") paths, all expected"
