//! The store shared by several controllers: etcd (v3 API, 3.4 and later).
//!
//! Keys live under a prefix (`/volmig/` by default). Transactions compare
//! each key's `mod_revision` (or `create_revision == 0` for an absent key),
//! so a compare-and-swap that lost to another controller writes nothing.
//! Leased keys get a fresh lease per write, so a registration lapses `ttl`
//! after the last heartbeat that any controller recorded. Leadership is
//! etcd's election API on `<prefix>leader`, held with a lease this
//! controller keeps alive: if the controller dies or loses etcd, the lease
//! lapses within its TTL and the next campaigner is elected.
//!
//! This adapter is the only part of the controller that speaks a wire
//! protocol (etcd's), as the file store is the only one that writes files.

use std::path::Path;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp,
};

use super::{Compare, Leadership, Store, StoreError, Versioned, Write};
use crate::config::EtcdConfig;

/// The store in etcd.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    lease_ttl: Duration,
    /// This controller's name in elections.
    name: String,
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))
}

/// Whole seconds of a TTL, at least 1 (etcd's leases count in seconds).
fn seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)
}

impl EtcdStore {
    /// Connects to etcd as the `[etcd]` table says.
    pub async fn connect(settings: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        if settings.endpoints.is_empty() {
            return Err(StoreError::Unavailable(
                "no etcd endpoints configured ([etcd] endpoints)".into(),
            ));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(settings.request_timeout_seconds.max(1)))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some(ca) = &settings.ca {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&settings.cert, &settings.key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        if let Some(user) = &settings.user {
            let password = match &settings.password_file {
                Some(path) => String::from_utf8_lossy(&read(path)?)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                None => String::new(),
            };
            options = options.with_user(user.clone(), password);
        }
        let client = Client::connect(&settings.endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(EtcdStore {
            client,
            prefix: settings.prefix.clone(),
            lease_ttl: Duration::from_secs(settings.lease_ttl_seconds.max(1)),
            name: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Keeps `lease` alive every third of `ttl`; turns `lost` true when
    /// etcd says it expired or nothing was renewed for a whole TTL.
    fn keep_alive(&self, lease: i64, lost: tokio::sync::watch::Sender<bool>) {
        let mut client = self.client.clone();
        let ttl = self.lease_ttl;
        tokio::spawn(async move {
            let mut renewed = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(ttl / 3);
            'session: loop {
                let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
                    if renewed.elapsed() >= ttl {
                        break;
                    }
                    tokio::time::sleep(ttl / 10).await;
                    continue;
                };
                loop {
                    tick.tick().await;
                    if lost.is_closed() {
                        let _ = client.lease_revoke(lease).await;
                        return;
                    }
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(ttl / 3, stream.message()).await {
                        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                            renewed = tokio::time::Instant::now()
                        }
                        Ok(Ok(Some(_))) => break 'session,
                        _ => {
                            if renewed.elapsed() >= ttl {
                                break 'session;
                            }
                            break;
                        }
                    }
                }
                if renewed.elapsed() >= ttl {
                    break;
                }
            }
            let _ = lost.send(true);
        });
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let resp = self
            .client
            .clone()
            .get(self.key(key), None)
            .await
            .map_err(unavailable)?;
        Ok(resp.kvs().first().map(|kv| Versioned {
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let resp = self
            .client
            .clone()
            .get(self.key(prefix), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                let key = key.strip_prefix(&self.prefix)?.to_string();
                Some((
                    key,
                    Versioned {
                        value: kv.value().to_vec(),
                        revision: kv.mod_revision(),
                    },
                ))
            })
            .collect())
    }

    async fn commit(&self, when: Vec<Compare>, then: Vec<Write>) -> Result<bool, StoreError> {
        let compares: Vec<EtcdCompare> = when
            .into_iter()
            .map(|c| match c {
                Compare::Absent(k) => {
                    EtcdCompare::create_revision(self.key(&k), CompareOp::Equal, 0)
                }
                Compare::At(k, rev) => {
                    EtcdCompare::mod_revision(self.key(&k), CompareOp::Equal, rev)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = then
            .into_iter()
            .map(|w| match w {
                Write::Put(k, v) => TxnOp::put(self.key(&k), v, None),
                Write::Delete(k) => TxnOp::delete(self.key(&k), None),
            })
            .collect();
        let resp = self
            .client
            .clone()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(unavailable)?;
        Ok(resp.succeeded())
    }

    async fn put_leased(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(seconds(ttl), None)
            .await
            .map_err(unavailable)?;
        client
            .put(
                self.key(key),
                value,
                Some(PutOptions::new().with_lease(lease.id())),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn lead(&self) -> Result<Leadership, StoreError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(seconds(self.lease_ttl), None)
            .await
            .map_err(unavailable)?
            .id();
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Kept alive while campaigning too: a campaign waits as long as
        // another controller leads.
        self.keep_alive(lease, tx);
        let mut lost = rx.clone();
        let campaign = client.campaign(self.key("leader"), self.name.clone(), lease);
        tokio::select! {
            won = campaign => { won.map_err(unavailable)?; }
            _ = lost.wait_for(|l| *l) => {
                return Err(StoreError::Unavailable("lost the lease while campaigning".into()));
            }
        }
        Ok(Leadership::new(rx))
    }
}
