#!/usr/bin/env bash
# Every check and test ringsync has, installing what is missing first. CI runs exactly this
# (.ci/run), on a clean clone: nothing here may rely on a tool installed by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

step "test dependencies"
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
# openssl generates the Ed25519 key pair tests/auth.rs signs tokens with.
command -v openssl >/dev/null || apt_install openssl
# prlimit (util-linux) caps the file size a durable-rooms test's server may write (a full disk).
command -v prlimit >/dev/null || apt_install util-linux
# promtool (Debian package prometheus) checks the /metrics exposition.
command -v promtool >/dev/null || apt_install prometheus
# Python 3 with venv runs kosoku (pinned in scripts/autobahn.sh), the Autobahn TestSuite runner.
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3 python3-venv
# Debian's Chromium drives the demo page in the browser tests.
[ -x /usr/bin/chromium ] || apt_install chromium
# tests/redis_store.rs and tests/cluster.rs start their own redis-server (a free port, a temporary directory).
command -v redis-server >/dev/null || apt_install redis-server
[ -x /usr/bin/chromium ] || { echo "chromium did not install" >&2; exit 1; }
# Pinned in tests/js/package-lock.json: the JSON Patch conformance suite and the browser driver.
if [ ! -d tests/js/node_modules/json-patch-test-suite ] || [ ! -d tests/js/node_modules/playwright-core ]; then
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (contributors' docs: private items, no broken links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked

# RINGSYNC_* variables are the server's flags. Tests must not depend on the shell they run in, so
# they run with hostile values set: a test that let one through would see a 1-entry ring, 64-byte
# messages and an unbindable address.
hostile_env=(RINGSYNC_HISTORY=1 RINGSYNC_MAX_MESSAGE_BYTES=64 RINGSYNC_LISTEN=192.0.2.1:1
    RINGSYNC_PRESENCE_INTERVAL=60000 RINGSYNC_MAX_CONNECTIONS=1 RINGSYNC_MAX_ROOMS=1)

step "cargo test (unit, conformance, property, integration; hostile RINGSYNC_* set)"
env "${hostile_env[@]}" cargo test --workspace --locked

step "Autobahn TestSuite: 301 cases against the WebSocket read/write path (scripts/autobahn.sh)"
# target/debug/ringsync was built by cargo test above; hostile RINGSYNC_* set: the script strips them.
env "${hostile_env[@]}" scripts/autobahn.sh target/debug/ringsync

step "promtool check metrics (scrape taken after the metrics scenario test)"
scrape=target/tmp/metrics-scrape.prom
[ -s "$scrape" ] || { echo "missing $scrape (written by tests/metrics.rs)" >&2; exit 1; }
promtool check metrics < "$scrape"
# Every metric the Grafana dashboard queries must exist in a real scrape.
missing=0
for name in $(grep -o 'ringsync_[a-z_]*' scripts/grafana-dashboard.json | sort -u); do
    base=${name%_bucket}; base=${base%_count}; base=${base%_sum}
    grep -q "^# TYPE $base " "$scrape" || { echo "dashboard uses unknown metric $name" >&2; missing=1; }
done
[ "$missing" = 0 ]
node -e 'JSON.parse(require("fs").readFileSync("scripts/grafana-dashboard.json", "utf8"))'

step "client library unit tests and headless-Chromium tests (node --test)"
# The browser tests start target/debug/ringsync (built by cargo test above) on a free port.
env "${hostile_env[@]}" RINGSYNC_BIN=target/debug/ringsync RINGSYNC_REQUIRE_BROWSER=1 node --test --test-timeout=300000 tests/js/

echo
echo "scripts/test.sh: all checks passed"
