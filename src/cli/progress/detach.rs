//! What the operator is told on Ctrl-C: the migration goes on in the node,
//! and how to follow, cancel or find it again.

/// What to tell the operator when they detach, so they can find the migration again.
#[derive(Debug, Clone, Default)]
pub struct Detach {
    /// Flags that point a follow-up command at the same service, e.g.
    /// `" --controller http://c1:7400"`; empty for the default node.
    pub target_flags: String,
    /// The migration id when known before any event arrives (`watch ID`).
    pub migration_id: Option<String>,
    /// For `migrate`: the request id and the domain, to reattach or find a
    /// migration whose first event never arrived.
    pub request: Option<(String, String)>,
}

/// What to print on Ctrl-C: the migration goes on, and how to reach it again.
pub fn detach_message(
    detach: &Detach,
    migration_id: Option<&str>,
    node_id: Option<&str>,
) -> String {
    let flags = &detach.target_flags;
    match (migration_id, &detach.request) {
        (Some(id), _) => {
            let on_node = node_id.map(|n| format!(" on node {n}")).unwrap_or_default();
            format!(
                "interrupted: detached from migration {id}, which continues{on_node}\n  \
                 follow it: volmig watch {id}{flags}\n  \
                 cancel it: volmig cancel {id}{flags}\n"
            )
        }
        (None, Some((request_id, domain))) => format!(
            "interrupted before the first event; the migration may have started\n  \
             attach to it: rerun the same command with --request-id {request_id}\n  \
             find it:      volmig list --domain {domain} --active{flags}\n"
        ),
        (None, None) => "interrupted\n".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_c_tells_how_to_follow_and_cancel() {
        let detach = Detach {
            target_flags: " --controller http://c1:7400".into(),
            ..Default::default()
        };
        assert_eq!(
            detach_message(&detach, Some("m1"), Some("n1")),
            "interrupted: detached from migration m1, which continues on node n1\n  \
             follow it: volmig watch m1 --controller http://c1:7400\n  \
             cancel it: volmig cancel m1 --controller http://c1:7400\n"
        );
    }

    #[test]
    fn ctrl_c_before_the_first_event_tells_how_to_reattach() {
        let detach = Detach {
            request: Some(("r1".into(), "vm1".into())),
            ..Default::default()
        };
        let message = detach_message(&detach, None, None);
        assert!(message.contains("--request-id r1"), "{message}");
        assert!(
            message.contains("volmig list --domain vm1 --active"),
            "{message}"
        );
    }
}
