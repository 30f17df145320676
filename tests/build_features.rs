//! The crate graph is the architecture (docs/architecture.md): these tests
//! read it with `cargo tree` and fail when an arrow points the wrong way or a
//! build links what its features did not ask for.
//!
//! A control-plane host builds `--no-default-features` (controller and CLI):
//! it must not link libvirt, the etcd client or the OTLP exporter. The engine
//! and the controller's domain must not know gRPC, libvirt or OpenTelemetry.

use std::collections::BTreeSet;
use std::process::Command;

/// The names of every crate `cargo tree` lists for `args` (normal
/// dependencies only: what the built binary links).
fn linked(args: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn assert_absent(crates: &BTreeSet<String>, what: &str, forbidden: &[&str]) {
    let found: Vec<_> = forbidden.iter().filter(|c| crates.contains(**c)).collect();
    assert!(found.is_empty(), "{what} links {found:?}");
}

#[test]
fn control_plane_build_links_no_libvirt_etcd_or_otlp_exporter() {
    let full = linked(&["-p", "volmig"]);
    // The default build has them: the check below is not vacuous.
    for c in [
        "virt",
        "volmig-libvirt",
        "etcd-client",
        "opentelemetry-otlp",
    ] {
        assert!(full.contains(c), "the default build lacks {c}");
    }
    let control_plane = linked(&["-p", "volmig", "--no-default-features"]);
    assert_absent(
        &control_plane,
        "the --no-default-features build",
        &[
            "virt",
            "virt-sys",
            "volmig-libvirt",
            "etcd-client",
            "opentelemetry-otlp",
        ],
    );
    assert!(control_plane.contains("volmig-controller"));
}

#[test]
fn domain_crates_know_no_transport_hypervisor_or_tracing_backend() {
    let transport_and_backends = [
        "tonic",
        "prost",
        "virt",
        "virt-sys",
        "opentelemetry",
        "etcd-client",
    ];
    for krate in ["volmig-types", "volmig-engine", "volmig-config"] {
        assert_absent(&linked(&["-p", krate]), krate, &transport_and_backends);
    }
    // The controller's domain: etcd only with its feature.
    assert_absent(
        &linked(&["-p", "volmig-controller"]),
        "volmig-controller",
        &transport_and_backends,
    );
    // The libvirt crate implements the engine's port and knows no gRPC.
    let libvirt = linked(&["-p", "volmig-libvirt"]);
    assert!(libvirt.contains("volmig-engine") && libvirt.contains("virt"));
    assert_absent(
        &libvirt,
        "volmig-libvirt",
        &["tonic", "prost", "volmig-controller"],
    );
    // Arrows run one way: nothing under crates/ depends on the edge.
    for krate in [
        "volmig-types",
        "volmig-engine",
        "volmig-libvirt",
        "volmig-controller",
        "volmig-config",
        "volmig-telemetry",
    ] {
        let deps = linked(&["-p", krate]);
        assert!(
            !deps.contains("volmig"),
            "{krate} depends on the volmig package"
        );
    }
}
