//! Relaying a node's migration events to the caller and into the history,
//! and following unfinished migrations after a controller restart.

use super::*;

impl ControllerService {
    /// Relays a node's event stream to the caller and into the history.
    pub(super) fn relay(
        &self,
        mut stream: tonic::Streaming<proto::MigrationEvent>,
        first: Option<proto::MigrationEvent>,
    ) -> EventStream {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let history = self.inner.history.clone();
        tokio::spawn(async move {
            let mut caller_gone = false;
            if let Some(event) = first {
                caller_gone = tx.send(Ok(event)).await.is_err();
            }
            loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        if let Err(e) = history.update_latest(&event) {
                            tracing::error!(error = %e, "cannot record migration event");
                        }
                        if !caller_gone {
                            caller_gone = tx.send(Ok(event)).await.is_err();
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        if !caller_gone {
                            let _ = tx
                                .send(Err(Status::unavailable(format!(
                                    "lost the node's event stream: {}; the migration goes on there, follow it with WatchMigration",
                                    status.message()
                                ))))
                                .await;
                        }
                        break;
                    }
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Keeps the history of a migration up to date after a restart, retrying
    /// while its node is unreachable.
    pub(super) async fn follow_until_done(&self, entry: Entry) {
        let id = entry.record.migration_id.clone();
        loop {
            let Some(node) = self.inner.registry.get(&entry.record.node_id) else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            if let Ok(mut client) = self.client(&node).await {
                if let Ok(resp) = client
                    .watch_migration(proto::WatchMigrationRequest {
                        migration_id: id.clone(),
                    })
                    .await
                {
                    let mut stream = resp.into_inner();
                    while let Ok(Some(event)) = stream.message().await {
                        let _ = self.inner.history.update_latest(&event);
                    }
                }
            }
            if self.inner.history.get(&id).is_some_and(|e| e.is_terminal()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
