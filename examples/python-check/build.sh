#!/usr/bin/env bash
# Builds the Python health check into target/plugins/python-check.wasm.
# Uses (creating if needed) a virtualenv at target/python-venv with
# componentize-py, which bundles the Python interpreter into the component.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/python-venv"
version="0.25.1"
out="$repo/target/plugins/python-check.wasm"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $version"; then
    "$venv/bin/pip" install --quiet "componentize-py==$version"
fi

mkdir -p "$(dirname "$out")"
cd "$here"
"$venv/bin/componentize-py" -d "$repo/wit" -w health-check componentize app -o "$out.tmp"
mv "$out.tmp" "$out"
rm -rf "$here/__pycache__"
echo "built $out ($(du -h "$out" | cut -f1))"
