#!/usr/bin/env bash
# Builds every guest crate of the plugins workspace for wasm32-unknown-unknown
# and turns each into a component at <repo>/target/plugins/<crate>.wasm.
#
# Toolchains, in order of preference:
#   1. rustup with the wasm32-unknown-unknown target installed: plain cargo.
#   2. Debian's rustc-web (/usr/bin/rustc, 1.96+ with rust-web-src) and
#      wasm-ld-19/wasm-ld: -Zbuild-std, since no prebuilt wasm std is shipped.
# The componentize tool is built with the normal cargo from the root workspace.
set -euo pipefail

plugins_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$plugins_dir/.." && pwd)"
target=wasm32-unknown-unknown
guest_target_dir="$plugins_dir/target"
out_dir="$repo_dir/target/plugins"

cd "$plugins_dir"

if command -v rustup >/dev/null 2>&1 &&
    rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "plugins: using rustup's $target target" >&2
    guest_cargo=(cargo build --release --target "$target")
elif [[ -x /usr/bin/rustc && -x /usr/bin/cargo ]] &&
    linker="$(command -v wasm-ld-19 || command -v wasm-ld)" &&
    [[ -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library" ]]; then
    echo "plugins: using Debian rustc-web with -Zbuild-std and $(basename "$linker")" >&2
    guest_cargo=(env RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc /usr/bin/cargo build --release --target "$target"
        -Zbuild-std=std,panic_abort
        --config "target.$target.linker=\"$linker\"")
else
    cat >&2 <<'MSG'
plugins: no toolchain can build wasm32-unknown-unknown here. Either
  rustup target add wasm32-unknown-unknown
or (Debian 12) install the packaged toolchain with its std sources:
  apt-get install -y --no-install-recommends rustc-web cargo-web rust-web-src lld-19
MSG
    exit 1
fi

# The guest crates: every member of the plugins workspace with a cdylib,
# as "<package name> <lib target name>" lines.
if ! command -v python3 >/dev/null 2>&1; then
    echo "plugins: python3 is needed to read the plugins workspace's members" >&2
    exit 1
fi
crates=()
while IFS= read -r line; do
    crates+=("$line")
done < <(
    cargo metadata --no-deps --format-version 1 --manifest-path "$plugins_dir/Cargo.toml" |
        python3 -c 'import json, sys
d = json.load(sys.stdin)
members = set(d["workspace_members"])
for p in d["packages"]:
    if p["id"] in members:
        for t in p["targets"]:
            if "cdylib" in t["kind"]:
                print(p["name"], t["name"].replace("-", "_"))'
)
if [[ ${#crates[@]} -eq 0 ]]; then
    echo "plugins: no guest crates (cdylib members) in $plugins_dir/Cargo.toml" >&2
    exit 1
fi

# One cargo run per plugin, not --workspace: cargo unifies the features of
# the packages built together, so a health check would be linked with the SDK's
# `hook` world too (and carry its types) just because a hook is a member.
for entry in "${crates[@]}"; do
    read -r name _ <<<"$entry"
    CARGO_TARGET_DIR="$guest_target_dir" "${guest_cargo[@]}" -p "$name"
done

# The componentize tool (host side, root workspace, normal toolchain).
(cd "$repo_dir" && cargo build --quiet -p componentize)
componentize="$repo_dir/target/debug/componentize"

mkdir -p "$out_dir"
: >"$out_dir/shipped.txt.tmp"
for entry in "${crates[@]}"; do
    read -r name lib <<<"$entry"
    module="$guest_target_dir/$target/release/$lib.wasm"
    "$componentize" "$module" "$out_dir/$name.wasm"
    echo "$name" >>"$out_dir/shipped.txt.tmp"
    echo "plugins: $out_dir/$name.wasm ($(wc -c <"$out_dir/$name.wasm") bytes)" >&2
done
# The plugins that packages ship (examples built elsewhere are not listed).
mv "$out_dir/shipped.txt.tmp" "$out_dir/shipped.txt"
