#!/usr/bin/env bash
# Polyglot clients and the contract, proven on a fresh machine:
#   - Python: grpcio + grpcio-tools + pytest from tests/requirements.txt into
#     .tools/venv; stubs are generated from proto/ by the tests themselves;
#     runs tests/polyglot/python against a real backup-server.
#   - Node: @grpc/grpc-js + @grpc/proto-loader from npm (tests/polyglot/node,
#     exact versions, package-lock.json); runs tests/polyglot/node with the
#     machine's node.
#   - buf (npm package @bufbuild/buf, pinned below, into .tools/buf): `buf
#     lint`, and `buf breaking` against the last commit on main that changed
#     proto/. (Not a devDependency of tests/polyglot/node: its lockfile would
#     have to list buf's binary package for every platform.)
# A missing tool fails the run; nothing is skipped. The server binary is
# $BACKUP_SERVER_BIN, else target/debug/backup-server, built here.
# Prints `polyglot: N passed, M failed` last; exits 0 only when M is 0.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
root="$PWD"

die() {
    echo "polyglot: $*" >&2
    exit 1
}
need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is required but not on PATH${2:+ ($2)}"
}

need git
need python3 "Python 3 with venv, for the Python client tests"
need node "Node.js >= 20, for the Node client tests"
need npm "for @grpc/grpc-js, @grpc/proto-loader and @bufbuild/buf"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "node >= 20 is required, found $(node --version)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- the server under test --------------------------------------------------
if [ -z "${BACKUP_SERVER_BIN:-}" ]; then
    need cargo "to build backup-server (or set BACKUP_SERVER_BIN)"
    cargo build -p backup-server --locked
    export BACKUP_SERVER_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/backup-server"
fi
[ -x "$BACKUP_SERVER_BIN" ] || die "server binary $BACKUP_SERVER_BIN is missing or not executable"
echo "polyglot: server binary $BACKUP_SERVER_BIN"

# --- installs ---------------------------------------------------------------
venv="$root/.tools/venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt

node_dir="tests/polyglot/node"
if [ -f "$node_dir/package-lock.json" ]; then
    npm ci --prefix "$node_dir" --no-audit --no-fund
else
    npm install --prefix "$node_dir" --no-audit --no-fund
fi
buf="$root/.tools/buf/node_modules/.bin/buf"
if [ "$("$buf" --version 2>/dev/null || true)" != "$BUF_VERSION" ]; then
    npm install --prefix "$root/.tools/buf" --no-save --no-package-lock --no-audit --no-fund \
        "@bufbuild/buf@$BUF_VERSION"
fi
[ "$("$buf" --version)" = "$BUF_VERSION" ] || die "buf $BUF_VERSION did not install into .tools/buf"

# --- runs: every part runs; failures are counted, then reported -----------
passed=0
failed=0
summary=()

echo "== python (pytest tests/polyglot/python)"
py_rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider --junitxml="$work/pytest.xml" \
    tests/polyglot/python || py_rc=$?
[ -f "$work/pytest.xml" ] || die "pytest wrote no report (exit $py_rc)"
read -r py_pass py_fail < <("$venv/bin/python" - "$work/pytest.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = sum(int(s.get("tests", 0)) for s in suites)
bad = sum(int(s.get(k, 0)) for s in suites for k in ("failures", "errors", "skipped"))
print(total - bad, bad)
EOF
)
py_pass="${py_pass:-0}"
py_fail="${py_fail:-0}"
# A non-zero exit with nothing counted as failed (say, no tests collected)
# still fails the run.
if [ "$py_rc" -ne 0 ] && [ "$py_fail" -eq 0 ]; then py_fail=1; fi
passed=$((passed + py_pass))
failed=$((failed + py_fail))
summary+=("python: $py_pass passed, $py_fail failed")

echo "== node (npm test --prefix $node_dir)"
node_rc=0
npm test --prefix "$node_dir" -- \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$work/node.tap" || node_rc=$?
node_pass="$(sed -n 's/^# pass \([0-9][0-9]*\)$/\1/p' "$work/node.tap" 2>/dev/null | tail -1)"
node_fail="$(sed -n 's/^# fail \([0-9][0-9]*\)$/\1/p' "$work/node.tap" 2>/dev/null | tail -1)"
node_skip="$(sed -n 's/^# \(skipped\|todo\|cancelled\) \([0-9][0-9]*\)$/\2/p' "$work/node.tap" 2>/dev/null \
    | awk '{ s += $1 } END { print s + 0 }')"
node_pass="${node_pass:-0}"
node_fail=$(( ${node_fail:-0} + node_skip ))
if [ "$node_rc" -ne 0 ] && [ "$node_fail" -eq 0 ]; then node_fail=1; fi
if [ "$node_pass" -eq 0 ] && [ "$node_fail" -eq 0 ]; then node_fail=1; fi # no tests ran
passed=$((passed + node_pass))
failed=$((failed + node_fail))
summary+=("node: $node_pass passed, $node_fail failed")

echo "== buf lint"
if "$buf" lint; then
    passed=$((passed + 1))
    summary+=("buf lint: ok")
else
    failed=$((failed + 1))
    summary+=("buf lint: FAILED")
fi

# The baseline: the last commit on main that changed proto/. A shallow clone
# may not hold that commit (nor a main branch); then HEAD is the baseline,
# which is what main's proto/ is when CI runs on main.
base_ref=HEAD
for ref in refs/heads/main refs/remotes/origin/main; do
    if git rev-parse --verify --quiet "$ref^{commit}" >/dev/null; then
        base_ref="$ref"
        break
    fi
done
against="$(git log -1 --format=%H "$base_ref" -- proto/ 2>/dev/null || true)"
if [ -n "$against" ] && git cat-file -e "$against^{commit}" 2>/dev/null; then
    against_note="last commit on ${base_ref#refs/*/} that changed proto/"
    if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
        against_note="$against_note, as far as this shallow clone's history goes"
    fi
else
    against="$(git rev-parse HEAD)"
    against_note="HEAD: no commit changing proto/ found on $base_ref in this clone"
fi
echo "== buf breaking: working tree proto/ against $against ($against_note)"
if "$buf" breaking --against ".git#ref=$against"; then
    passed=$((passed + 1))
    summary+=("buf breaking vs ${against:0:12}: ok")
else
    failed=$((failed + 1))
    summary+=("buf breaking vs ${against:0:12}: FAILED")
fi

for line in "${summary[@]}"; do
    echo "polyglot: $line"
done
echo "polyglot: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
