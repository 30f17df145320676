//! The Kubernetes manifests rendered with kustomize and validated against the schemas,
//! and the lookups the manifest tests make in the result.

use std::path::Path;

use crate::harness;

/// The virtualenv deploy/setup-tests.sh installs `kubernetes-validate` into
/// (its Python has PyYAML, which the validator needs anyway).
const K8S_VENV: &str = "/var/tmp/volmig-k8s-venv/bin";

/// `kubectl kustomize DIR`, validated strictly against the Kubernetes 1.30
/// schemas (every object must pass), and read back: the YAML text and its
/// objects. Also checks what the schemas cannot: every container's volume
/// mount names a volume of its pod.
pub fn render_and_validate(dir: &Path) -> (String, Vec<serde_json::Value>) {
    let rendered = harness::run_ok("kubectl", &["kustomize", &dir.to_string_lossy()]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("volmig.yaml");
    std::fs::write(&file, &rendered).expect("write");
    let file = file.to_string_lossy();
    let out = harness::run_ok(
        &format!("{K8S_VENV}/kubernetes-validate"),
        &["--strict", "-k", "1.30.0", &file],
    );
    let json = harness::run_ok(
        &format!("{K8S_VENV}/python"),
        &[
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([o for o in yaml.safe_load_all(open(sys.argv[1])) if o]))",
            &file,
        ],
    );
    let objects: Vec<serde_json::Value> = serde_json::from_str(&json).expect("objects");
    assert_eq!(
        out.matches("passed for resource").count(),
        objects.len(),
        "{out}"
    );
    for pod in objects
        .iter()
        .filter_map(|o| o.pointer("/spec/template/spec"))
    {
        let volumes = names(&pod["volumes"]);
        for container in pod["containers"].as_array().expect("containers") {
            for mount in names(&container["volumeMounts"]) {
                assert!(volumes.contains(&mount), "{mount} has no volume: {pod}");
            }
        }
    }
    (rendered, objects)
}

/// The `name`s of a list of objects (none when it is absent).
fn names(list: &serde_json::Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect()
}

/// The kinds both renderings hold (sorted), one per object: all of the base's
/// but its controller's PersistentVolumeClaim.
pub const KINDS_BUT_THE_STATE_VOLUME: [&str; 8] = [
    "ConfigMap",
    "ConfigMap",
    "DaemonSet",
    "Deployment",
    "Namespace",
    "PodDisruptionBudget",
    "PodDisruptionBudget",
    "Service",
];

/// The sorted kinds of `objects`.
pub fn kinds(objects: &[serde_json::Value]) -> Vec<&str> {
    let mut kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    kinds.sort_unstable();
    kinds
}

/// The object of `kind` named `name`.
pub fn object<'a>(
    objects: &'a [serde_json::Value],
    kind: &str,
    name: &str,
) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}
