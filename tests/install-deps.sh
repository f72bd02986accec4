#!/usr/bin/env bash
# What the build and the tests need besides Rust, installed when missing:
#   build: protoc (Debian's protobuf-compiler) and the well-known .proto files
#          it imports (libprotobuf-dev, only recommended by the compiler),
#          both used by etcd-client's build
#   test:  the etcd binary for the fleet tests (Debian's etcd-server), taken
#          out of its package into target/etcd so that no service starts;
#          openssl, whose s_server is the HTTPS peer of the TLS tests
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

# protoc looks for google/protobuf/*.proto beside its own include directory.
protoc_include() {
    local bin
    bin="$(command -v protoc 2>/dev/null)" || return 1
    [ -f "$(dirname "$bin")/../include/google/protobuf/descriptor.proto" ] \
        || [ -f /usr/include/google/protobuf/descriptor.proto ] \
        || [ -n "${PROTOC_INCLUDE:-}" ]
}
if ! protoc_include; then
    as_root "protoc and its well-known types" \
        "apt-get update && apt-get install -y protobuf-compiler libprotobuf-dev"
    echo "installing protobuf-compiler libprotobuf-dev"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev
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

if [ "$want" = test ] && ! command -v openssl >/dev/null 2>&1; then
    as_root "openssl (for the TLS tests)" "apt-get update && apt-get install -y openssl"
    echo "installing openssl"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssl
fi
