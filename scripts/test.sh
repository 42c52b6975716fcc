#!/usr/bin/env bash
# Every check and test ringsync has, installing what is missing first. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

step "test dependencies"
command -v npm >/dev/null || apt_install nodejs npm
# Pinned in tests/js/package-lock.json: the JSON Patch conformance suite and the browser driver.
if [ ! -d tests/js/node_modules/json-patch-test-suite ] || [ ! -d tests/js/node_modules/playwright-core ]; then
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked

echo
echo "scripts/test.sh: all checks passed"
