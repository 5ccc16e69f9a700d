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

step "format"
cargo fmt --all --check

step "dependency direction"
python3 scripts/check_deps.py

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "doc tests"
cargo test --workspace --doc --locked

# Last, so its summary ("N tests run: N passed") is the suite's closing line.
step "tests"
cargo nextest run --workspace --all-targets --locked --no-fail-fast
