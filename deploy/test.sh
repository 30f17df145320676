#!/usr/bin/env bash
# The whole test suite: host set-up, formatting, lints, unit tests and the
# end-to-end tests against the real libvirtd + QEMU + test guest (and a local
# single-node Ceph for the RBD tests). Fails on any failure; skips nothing.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
start=$(date +%s)

# What running volmig needs, then what only the tests need.
bash deploy/setup-host.sh
bash deploy/setup-tests.sh
# The set-up may have just installed Rust with rustup: its cargo comes first.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
# The RBD tests start a single-node Ceph on demand and leave it up for the next test;
# stop it at the end unless it was already running before this run.
ceph_dir=/var/tmp/volmig-ceph
if [ ! -e "$ceph_dir/env" ]; then
    trap 'bash deploy/ceph/ceph-down.sh "$ceph_dir" >/dev/null 2>&1 || true' EXIT
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The control-plane build (controller and CLI only: no libvirt, etcd or OTLP)
# must compile cleanly too; tests/build_features.rs checks what it links.
cargo clippy --locked --no-default-features -- -D warnings
# Host set-up ran above; tests skip their own run of it (each nextest process would
# otherwise repeat it).
export VOLMIG_HOST_READY=1
# cargo-nextest (on the CI machines) keeps all slots busy across test binaries; the
# slot count is in .config/nextest.toml. `cargo test` is the fallback elsewhere.
threads="${VOLMIG_TEST_THREADS:-3}"
if cargo nextest --version >/dev/null 2>&1; then
    # tests/libvirtd_restart.rs restarts libvirtd, which would disturb every test
    # running beside it: it runs alone, after the rest (also when the rest failed).
    status=0
    cargo nextest run --locked --workspace --all-targets --test-threads="$threads" \
        -E 'not binary(libvirtd_restart)' || status=$?
    cargo nextest run --locked --test libvirtd_restart || status=$?
    [ "$status" -eq 0 ] || exit "$status"
else
    echo "cargo-nextest not found: running the binaries one after another with cargo test"
    cargo test --locked --workspace --all-targets --no-fail-fast -- --test-threads="$threads"
fi
echo "test suite finished in $(( $(date +%s) - start )) s"
