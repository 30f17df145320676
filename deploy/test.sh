#!/usr/bin/env bash
# The whole test suite: host set-up, formatting, lints, unit tests and the
# end-to-end tests against the real libvirtd + QEMU + test guest (and a local
# single-node Ceph for the RBD tests). Fails on any failure; skips nothing.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
start=$(date +%s)

bash deploy/setup-host.sh
# The RBD tests start a single-node Ceph on demand and leave it up for the next test;
# stop it at the end unless it was already running before this run.
ceph_dir=/var/tmp/volmig-ceph
if [ ! -e "$ceph_dir/env" ]; then
    trap 'bash deploy/ceph/ceph-down.sh "$ceph_dir" >/dev/null 2>&1 || true' EXIT
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# E2E tests boot TCG guests; on 2 cores more than 3 at once only adds waiting.
cargo test --locked --all-targets -- --test-threads="${VOLMIG_TEST_THREADS:-3}"
echo "test suite finished in $(( $(date +%s) - start )) s"
