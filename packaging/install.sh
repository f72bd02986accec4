#!/bin/sh
# Installs rollback-agent from a release tarball (`make dist`), or from a
# source tree after `make assets`, on a systemd machine without packages.
#
#   ./install.sh [--prefix /usr] [--destdir DIR] [--no-start]
#   ./install.sh --uninstall [--prefix /usr]
#
# Installs the binaries, the unit, sysusers.d and tmpfiles.d entries, the
# shipped plugins, man pages, completions and (only if absent) the config
# /etc/rollback-agent/agent.toml; an existing config is kept and the new
# default is written next to it as agent.toml.new. Then creates the groups
# and directories, reloads systemd and enables and starts rollbackd, unless
# --destdir (staging for another packager) or --no-start is given.
# Uninstalling keeps the config and the state in /var/lib/rollback-agent.
set -eu

prefix=/usr
destdir=
start=yes
action=install
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --prefix=*) prefix="${1#*=}"; shift ;;
    --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
    --destdir=*) destdir="${1#*=}"; shift ;;
    --no-start) start=no; shift ;;
    --uninstall) action=uninstall; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$prefix" in
/*) ;;
*) echo "install.sh: --prefix must be an absolute path" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
# A tarball has bin/ beside this script; a source tree has target/assets.
if [ -d "$here/bin" ]; then
    assets="$here"
    files="$here"
else
    assets="$here/../target/assets"
    files="$here"
fi
for f in "$assets/bin/rollbackd" "$assets/bin/rollbackctl" "$files/rollbackd.service" \
    "$files/agent.toml" "$files/sysusers.d/rollback-agent.conf" "$files/tmpfiles.d/rollback-agent.conf"; do
    [ -f "$f" ] || { echo "install.sh: $f is missing (in a source tree, run make assets)" >&2; exit 1; }
done

root="${destdir%/}"
unit="$root/etc/systemd/system/rollbackd.service"
live=no
[ -z "$destdir" ] && [ -d /run/systemd/system ] && live=yes

if [ "$action" = uninstall ]; then
    if [ "$live" = yes ]; then
        systemctl disable --now rollbackd.service || true
    fi
    rm -f "$root$prefix/bin/rollbackd" "$root$prefix/bin/rollbackctl" "$unit" \
        "$root$prefix/lib/sysusers.d/rollback-agent.conf" \
        "$root$prefix/lib/tmpfiles.d/rollback-agent.conf" \
        "$root$prefix/share/man/man1/rollbackd.1.gz" "$root$prefix/share/man/man1/rollbackctl.1.gz" \
        "$root$prefix/share/bash-completion/completions/rollbackctl" \
        "$root$prefix/share/zsh/vendor-completions/_rollbackctl" \
        "$root$prefix/share/fish/vendor_completions.d/rollbackctl.fish"
    rm -rf "$root$prefix/lib/rollback-agent/plugins"
    [ "$live" = yes ] && systemctl daemon-reload
    echo "rollback-agent removed; kept /etc/rollback-agent and /var/lib/rollback-agent"
    exit 0
fi

install -d "$root$prefix/bin" "$root$prefix/lib/rollback-agent/plugins" \
    "$root/etc/systemd/system" "$root/etc/rollback-agent" \
    "$root$prefix/lib/sysusers.d" "$root$prefix/lib/tmpfiles.d" \
    "$root$prefix/share/man/man1" "$root$prefix/share/bash-completion/completions" \
    "$root$prefix/share/zsh/vendor-completions" "$root$prefix/share/fish/vendor_completions.d"
install -m 0755 "$assets/bin/rollbackd" "$assets/bin/rollbackctl" "$root$prefix/bin/"
for p in "$assets"/plugins/*.wasm; do
    [ -f "$p" ] && install -m 0644 "$p" "$root$prefix/lib/rollback-agent/plugins/"
done
install -m 0644 "$assets"/man/*.1.gz "$root$prefix/share/man/man1/"
install -m 0644 "$assets/completions/rollbackctl.bash" "$root$prefix/share/bash-completion/completions/rollbackctl"
install -m 0644 "$assets/completions/_rollbackctl" "$root$prefix/share/zsh/vendor-completions/_rollbackctl"
install -m 0644 "$assets/completions/rollbackctl.fish" "$root$prefix/share/fish/vendor_completions.d/rollbackctl.fish"
install -m 0644 "$files/sysusers.d/rollback-agent.conf" "$root$prefix/lib/sysusers.d/rollback-agent.conf"
install -m 0644 "$files/tmpfiles.d/rollback-agent.conf" "$root$prefix/lib/tmpfiles.d/rollback-agent.conf"
# The unit names /usr/bin/rollbackd and the plugins under /usr/lib: follow --prefix.
sed -e "s|/usr/bin/rollbackd|$prefix/bin/rollbackd|" "$files/rollbackd.service" >"$unit.tmp"
chmod 0644 "$unit.tmp"
mv "$unit.tmp" "$unit"
config="$root/etc/rollback-agent/agent.toml"
if [ -e "$config" ]; then
    install -m 0644 "$files/agent.toml" "$config.new"
    echo "kept $config; the new default is in $config.new"
else
    sed -e "s|/usr/lib/rollback-agent/plugins|$prefix/lib/rollback-agent/plugins|" \
        "$files/agent.toml" >"$config"
    chmod 0644 "$config"
fi

if [ -n "$destdir" ]; then
    echo "rollback-agent staged under $destdir"
    exit 0
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$prefix/lib/sysusers.d/rollback-agent.conf"
else
    getent group rollback >/dev/null || groupadd --system rollback
    getent group rollback-admin >/dev/null || groupadd --system rollback-admin
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create "$prefix/lib/tmpfiles.d/rollback-agent.conf" || true
fi
"$prefix/bin/rollbackd" --config /etc/rollback-agent/agent.toml --check-config
if [ "$live" = yes ]; then
    systemctl daemon-reload
    if [ "$start" = yes ]; then
        systemctl enable --now rollbackd.service
        systemctl --no-pager status rollbackd.service | head -n 5 || true
    fi
else
    echo "systemd is not running here: start it with $prefix/bin/rollbackd --config /etc/rollback-agent/agent.toml"
fi
echo "rollback-agent installed. Next: add your apps to /etc/rollback-agent/agent.toml and"
echo "their roots to ReadWritePaths= (systemctl edit rollbackd), then systemctl reload rollbackd."
