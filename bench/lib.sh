# Shared by the bench scripts (sourced, not run).

# Removes a bench's domain and its pools, whatever state they are in (also
# what a killed earlier run left).
bench_remove_domain_and_pools() { # domain pool...
    local dom=$1 p
    shift
    virsh -q destroy "$dom" >/dev/null 2>&1 || true
    virsh -q undefine "$dom" >/dev/null 2>&1 || true
    for p in "$@"; do
        virsh -q pool-destroy "$p" >/dev/null 2>&1 || true
        virsh -q pool-undefine "$p" >/dev/null 2>&1 || true
    done
}
