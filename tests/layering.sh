#!/usr/bin/env bash
# Fails when a module of the server imports what its layer may not (see the
# README's Layout): protobuf and tonic stay in the API layer, SeaORM and the
# entities in the state store, files and SQLite connections in backup
# storage and the source, and the domain types import nothing of the crate.
# Unit tests (from a file's top-level `#[cfg(test)]` on) are not checked.
set -euo pipefail
cd "$(dirname "$0")/../server/src"

failed=0
# rule NAME PATTERN ALLOWED...: PATTERN (extended regex) may appear only in
# files whose path starts with one of ALLOWED.
rule() {
    local name=$1 pattern=$2
    shift 2
    local file allowed ok hits
    while IFS= read -r file; do
        ok=0
        for allowed in "$@"; do
            [[ $file == "$allowed"* ]] && ok=1
        done
        [ "$ok" = 1 ] && continue
        hits=$(awk '/^#\[cfg\(test\)\]/ { exit } { print FILENAME ":" FNR ": " $0 }' "$file" |
            grep -E "$pattern" | grep -vE '^[^:]+:[0-9]+: *//' || true)
        if [ -n "$hits" ]; then
            sed "s/^/layering ($name): /" <<<"$hits"
            failed=1
        fi
    done < <(find . -name '*.rs' | sed 's|^\./||' | sort)
}

rule "tonic is the API layer's" '\btonic(_[a-z]+)?::' \
    api/ lib.rs main.rs telemetry.rs health.rs config.rs
rule "protobuf is the API layer's" '\b(backup_proto|prost_types|prost)::' \
    api/ lib.rs main.rs telemetry.rs health.rs
rule "SeaORM is the state store's" '\b(sea_orm|sqlx|migration)::' \
    store/ error.rs
rule "entities stay in the state store" '\bstore::entity\b|\bentity::' \
    store/
rule "files and SQLite connections stay in storage and the source" \
    '\bstd::fs\b|\bfs::|std::os::unix|\bOpenOptions\b|\brusqlite::' \
    backup/storage/ backup/source.rs backup/sqlite.rs store/ error.rs config.rs main.rs demo.rs
rule "the domain types import nothing but errors" 'crate::(api|audit|auth|backup|config|health|paging|retention|schedule|store|telemetry)\b' \
    api/ audit/ auth/ backup/ config.rs demo.rs health.rs lib.rs main.rs paging.rs retention/ schedule/ store/ telemetry.rs error.rs
rule "the state store imports no domain module" 'crate::(api|audit|auth|backup|retention|schedule|health|paging)\b' \
    api/ audit/ auth/ backup/ config.rs demo.rs health.rs lib.rs main.rs paging.rs retention/ schedule/ model/ telemetry.rs error.rs
rule "only lib.rs wires up the API" 'crate::api\b' \
    api/ lib.rs

if [ "$failed" = 1 ]; then
    echo "layering: imports cross a layer boundary (see above)" >&2
    exit 1
fi
echo "layering: every import stays within its layer"
