#!/usr/bin/env bash
# The whole Confab test suite: the one command the README gives and .ci/run calls.
# Installs what the tests need on a fresh machine, then checks formatting, lints, the
# crate dependency rule, and runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# The interop test drives the server with an independent client: Python's `websockets`.
if ! python3 -c "import websockets" >/dev/null 2>&1; then
  step "installing python websockets (interop test)"
  python3 -m pip install --quiet "websockets>=12" \
    || python3 -m pip install --quiet --break-system-packages "websockets>=12"
fi

# The web client's end-to-end tests drive Debian's Chromium with playwright-core (npm).
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# Only what is missing: a machine may already have Node.js from another source (e.g.
# NodeSource's `nodejs`, which bundles npm and conflicts with Debian's `npm` package).
browser_packages=()
[ -x /usr/bin/chromium ] || browser_packages+=(chromium)
command -v node >/dev/null 2>&1 || browser_packages+=(nodejs)
command -v npm >/dev/null 2>&1 || browser_packages+=(npm)
if [ "${#browser_packages[@]}" -gt 0 ]; then
  step "installing ${browser_packages[*]} (browser tests)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${browser_packages[@]}"
fi
# The cluster tests (gateway/tests/cluster.rs) start their own redis-server on a free
# loopback port per test and stop it (Debian's package; its service is not used).
if ! command -v redis-server >/dev/null 2>&1; then
  step "installing redis-server (cluster tests)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
fi
if [ ! -d gateway/tests/web/node_modules/playwright-core ]; then
  step "installing playwright-core (browser tests)"
  (cd gateway/tests/web && npm ci --no-audit --no-fund --loglevel=error)
fi

step "format"
cargo fmt --all --check

step "dependency direction"
python3 scripts/check_deps.py

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "doc tests"
cargo test --workspace --doc --locked

step "tests"
cargo nextest run --workspace --all-targets --locked --no-fail-fast

# The web client in a real browser against the binary the tests above built.
step "browser tests (headless chromium)"
cargo build -p gateway --bin confab --locked --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
(cd gateway/tests/web && CONFAB_BIN="$target_dir/debug/confab" \
  CONFAB_SCREENSHOT="$target_dir/web-chat.png" node --test --test-concurrency=1)
