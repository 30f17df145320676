//! The configuration layers through the binary: a generic environment
//! variable, a named one and `--set` flags reach `--print-config`, each over
//! the one before, and a variable naming no key stops the start. That every
//! key can be set through each layer is checked key by key in the config
//! crate (`layers::tests`).

mod harness;

use volmig::config::{ConnectionConfig, ControllerConfig, NodeConfig, TelemetryConfig};

#[test]
fn environment_and_set_flags_reach_the_printed_config_flags_last() {
    let (code, out, err) = harness::volmig(
        &[
            "node",
            "--print-config",
            "--set",
            "listen=127.0.0.1:7452",
            "--set",
            "telemetry.service_name=from-flag",
            "--set",
            "libvirt_grace_seconds=30",
        ],
        &[
            ("VOLMIG_NODE_LISTEN", "127.0.0.1:7451"),
            ("VOLMIG_NODE__TELEMETRY__SERVICE_NAME", "from-env"),
            ("VOLMIG_NODE__CONNECTIONS__MAX_HANDSHAKES", "9"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let printed: NodeConfig = toml::from_str(&out).expect("printed config parses");
    let want = NodeConfig {
        listen: "127.0.0.1:7452".into(),
        libvirt_grace_seconds: 30,
        telemetry: TelemetryConfig {
            service_name: "from-flag".into(),
            ..TelemetryConfig::default()
        },
        connections: ConnectionConfig {
            max_handshakes: 9,
            ..ConnectionConfig::default()
        },
        ..NodeConfig::default()
    };
    assert_eq!(printed, want, "{out}");

    let (code, out, err) = harness::volmig(
        &[
            "controller",
            "--print-config",
            "--set",
            "advertise_allow=[\"10.0.0.0/8\"]",
        ],
        &[("VOLMIG_CONTROLLER__POOL_DEFAULTS__MAX_IN_FLIGHT", "2")],
    );
    assert_eq!(code, 0, "{err}");
    let printed: ControllerConfig = toml::from_str(&out).expect("printed config parses");
    assert_eq!(printed.advertise_allow, ["10.0.0.0/8"]);
    assert_eq!(printed.pool_defaults.max_in_flight, Some(2));

    // Within the environment, the named variable wins over the generic one.
    let (code, out, err) = harness::volmig(
        &["controller", "--print-config"],
        &[
            ("VOLMIG_CONTROLLER__LISTEN", "127.0.0.1:7461"),
            ("VOLMIG_CONTROLLER_LISTEN", "127.0.0.1:7462"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let printed: ControllerConfig = toml::from_str(&out).expect("printed config parses");
    assert_eq!(printed.listen, "127.0.0.1:7462");
}

#[test]
fn a_variable_or_flag_naming_no_key_stops_the_start_naming_it() {
    let (code, _, err) = harness::volmig(
        &["node", "--print-config"],
        &[("VOLMIG_NODE__LIBVIRT_GRACE", "5")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("VOLMIG_NODE__LIBVIRT_GRACE") && err.contains("libvirt_grace_seconds"),
        "{err}"
    );
    let (code, _, err) = harness::volmig(
        &["controller", "--print-config", "--set", "max_node=3"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("--set") && err.contains("`max_node`") && err.contains("`max_nodes`"),
        "{err}"
    );
}
