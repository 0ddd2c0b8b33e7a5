#!/usr/bin/env bash
# Fails when a module of the server imports what its layer may not (see the
# README's Layout): protobuf and tonic stay in the API layer, SeaORM and the
# entities in the state store, files and SQLite connections in backup
# storage and the source, and the domain types import nothing of the crate.
# Unit tests (from a file's top-level `#[cfg(test)]` on) are not checked.
set -euo pipefail
cd "$(dirname "$0")/../server/src"

failed=0
# check NAME MODE PATTERN PATHS...: PATTERN (extended regex) may appear
# only in files under PATHS (MODE `only`), or never in them (MODE `never`).
check() {
    local name=$1 mode=$2 pattern=$3
    shift 3
    local file path inside hits
    while IFS= read -r file; do
        inside=0
        for path in "$@"; do
            [[ $file == "$path"* ]] && inside=1
        done
        [ "$mode" = only ] && [ "$inside" = 1 ] && continue
        [ "$mode" = never ] && [ "$inside" = 0 ] && continue
        hits=$(awk '/^#\[cfg\(test\)\]/ { exit } { print FILENAME ":" FNR ": " $0 }' "$file" |
            grep -E "$pattern" | grep -vE '^[^:]+:[0-9]+: *//' || true)
        if [ -n "$hits" ]; then
            sed "s/^/layering ($name): /" <<<"$hits"
            failed=1
        fi
    done < <(find . -name '*.rs' | sed 's|^\./||' | sort)
}

check "tonic is the API layer's" only '\btonic(_[a-z]+)?::' \
    api/ server.rs main.rs telemetry.rs health.rs config.rs
check "protobuf is the API layer's" only '\b(backup_proto|prost_types|prost)::' \
    api/ server.rs main.rs telemetry.rs health.rs
check "SeaORM is the state store's" only '\b(sea_orm|sqlx|migration)::' \
    store/ error.rs
check "entities stay in the state store" only '\bstore::entity\b|\bentity::' \
    store/
check "files and SQLite connections stay in storage and the source" only \
    '\bstd::fs\b|\bfs::|std::os::unix|\bOpenOptions\b|\brusqlite::' \
    backup/storage/ backup/source.rs backup/sqlite.rs backup/sqlite/ store/ error.rs config.rs main.rs demo.rs
check "the domain types import nothing but errors" never \
    'crate::(api|audit|auth|backup|config|health|paging|retention|schedule|server|store|telemetry)\b' \
    model/
check "the state store imports no domain module" never \
    'crate::(api|audit|auth|backup|config|health|paging|retention|schedule|server|telemetry)\b' \
    store/
check "only server.rs wires up the API" only 'crate::api\b' \
    api/ server.rs

if [ "$failed" = 1 ]; then
    echo "layering: imports cross a layer boundary (see above)" >&2
    exit 1
fi
echo "layering: every import stays within its layer"
