#!/usr/bin/env bash
# What the build and the tests need besides Rust, installed when missing:
#   build: protoc (Debian's protobuf-compiler), run by etcd-client's build
#   test:  the etcd binary for the fleet tests (Debian's etcd-server), taken
#          out of its package into target/etcd so that no service starts
# As root it installs them; otherwise it names the one command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-build}"

as_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: $1. Run as root: $2" >&2
        exit 1
    fi
}

if ! command -v protoc >/dev/null 2>&1; then
    as_root "protoc" "apt-get update && apt-get install -y protobuf-compiler"
    echo "installing protobuf-compiler"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends protobuf-compiler
fi

if [ "$want" = test ] && [ -z "${ETCD_BIN:-}" ] && ! command -v etcd >/dev/null 2>&1 \
    && [ ! -x target/etcd/usr/bin/etcd ]; then
    as_root "etcd (for the fleet tests)" "apt-get update && apt-get install -y etcd-server"
    echo "extracting etcd-server into target/etcd"
    mkdir -p target/etcd-download
    (cd target/etcd-download && apt-get update -qq && apt-get download -qq etcd-server)
    dpkg-deb -x target/etcd-download/etcd-server_*.deb target/etcd
    rm -rf target/etcd-download
fi
