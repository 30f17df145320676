//! The hostile inputs: strings, boundary numbers, out-of-range enum values, and
//! migration requests spoiled one field at a time.

use volmig::proto;

/// The hostile strings.
pub fn corpus() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("empty", ""),
        ("xml", "a'b\"<c>&d]]></source><disk>"),
        (
            "xml entity",
            "&lt;&#0;&x;<!ENTITY x SYSTEM \"file:///etc/passwd\">",
        ),
        ("dotdot", ".."),
        ("path traversal", "../../etc/shadow"),
        ("absolute traversal", "/var/lib/../../etc/shadow"),
        ("nul", "vda\0evil"),
        (
            "newline log forgery",
            "web01\n2026-01-01T00:00:00Z  INFO volmig: forged line",
        ),
        ("terminal escape", "web01\x1b[2J\x1b]0;owned\x07"),
        ("carriage return", "web01\rINFO forged"),
        ("tab and DEL", "a\tb\x7f"),
        ("unicode", "ドメイン-é-\u{202e}txt.exe"),
        ("emoji", "💥"),
        ("spaces", "   "),
        ("dash option", "--help"),
        ("shell", "$(reboot);`id`|rm -rf /"),
        ("url", "http://169.254.169.254/latest/meta-data"),
        ("unix url", "unix:///run/volmig/node.sock"),
        ("percent", "%s%n%x%00"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    out.push(("4 KiB".into(), "x".repeat(4096)));
    out.push(("1 MB".into(), "y".repeat(1_000_000)));
    out.push(("1 MB of NULs".into(), "\0".repeat(1_000_000)));
    out
}

/// Numbers at and around the limits of their fields.
pub const NUMBERS: [u64; 8] = [
    0,
    1,
    (1 << 20) - 1,
    1 << 53,
    (1 << 53) + 1,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

pub const ENUMS: [i32; 5] = [-1, 0, 3, 99, i32::MAX];

/// A migration request whose fields are all harmless (nothing would start:
/// the domain does not exist), to be spoiled one field at a time.
pub fn base() -> proto::MigrateVolumeRequest {
    proto::MigrateVolumeRequest {
        domain: "volmig-hostile-no-such-domain".into(),
        disk: "vda".into(),
        destination_pool: "volmig-hostile-no-such-pool".into(),
        ..Default::default()
    }
}

/// Spoils one string field of a migration request.
pub fn spoil(field: &str, value: &str) -> proto::MigrateVolumeRequest {
    let mut r = base();
    match field {
        "request_id" => r.request_id = value.into(),
        "domain" => r.domain = value.into(),
        "disk" => r.disk = value.into(),
        "destination_pool" => r.destination_pool = value.into(),
        "destination_volume" => r.destination_volume = value.into(),
        "required_tags" => r.required_tags = vec![value.into()],
        "source_users_elsewhere" => {
            r.options = Some(proto::MigrationOptions {
                source_users_elsewhere: vec![value.into()],
                ..Default::default()
            })
        }
        multi => {
            // A multi-disk request with one entry spoiled.
            r.disk.clear();
            let mut entry = proto::DiskDestination {
                disk: "vda".into(),
                ..Default::default()
            };
            match multi {
                "disks.disk" => entry.disk = value.into(),
                "disks.destination_pool" => entry.destination_pool = value.into(),
                "disks.destination_volume" => entry.destination_volume = value.into(),
                "disks.source_users_elsewhere" => entry.source_users_elsewhere = vec![value.into()],
                other => panic!("no field {other}"),
            }
            r.disks = vec![entry];
        }
    }
    r
}

pub const REQUEST_FIELDS: [&str; 11] = [
    "request_id",
    "domain",
    "disk",
    "destination_pool",
    "destination_volume",
    "required_tags",
    "source_users_elsewhere",
    "disks.disk",
    "disks.destination_pool",
    "disks.destination_volume",
    "disks.source_users_elsewhere",
];
