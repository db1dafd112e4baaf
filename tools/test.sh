#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, runs the Rust tests
# (unit, property, simulation) and then the Python tests that drive real
# `chordmail node` processes with real mail clients.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install-test-deps.sh
# The dependencies above include the real peers some tests talk to (Postfix): here a
# missing peer fails those tests instead of letting them check nothing.
export CHORDMAIL_REQUIRE_PEERS=1
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
CHORDMAIL_BIN="$PWD/target/debug/chordmail" python3 -m pytest -q -p no:cacheprovider tests "$@"
