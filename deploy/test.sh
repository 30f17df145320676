#!/usr/bin/env bash
# The whole test suite: host set-up, formatting, lints, unit tests and the
# end-to-end tests against the real libvirtd + QEMU + test guest (and a local
# single-node Ceph for the RBD tests). Fails on any failure; skips nothing.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
start=$(date +%s)

bash deploy/setup-host.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# E2E tests boot TCG guests; on 2 cores more than 3 at once only adds waiting.
cargo test --locked --all-targets -- --test-threads="${VOLMIG_TEST_THREADS:-3}"
echo "test suite finished in $(( $(date +%s) - start )) s"
