//! The store shared by several controllers: etcd (v3 API, 3.4 and later).
//!
//! Keys live under a prefix (`/volmig/` by default). Transactions compare
//! each key's `mod_revision` (or `create_revision == 0` for an absent key),
//! so a compare-and-swap that lost to another controller writes nothing.
//! A leased key lapses `ttl` after the last heartbeat that any controller
//! recorded. Heartbeats are frequent (a thousand nodes every few seconds)
//! and mostly unchanged, so a controller keeps one lease per key: while the
//! key still holds the value it put under its lease, renewing that lease is
//! the whole write (etcd renews leases without a Raft round or an fsync);
//! otherwise the value is put under a live lease. Whether the key still
//! holds it is checked by every listing of the key's prefix (the
//! registration sync lists them twice a second): a key another controller
//! rewrote meanwhile carries that controller's fresh lease, so renewing
//! ours until the next listing lets nothing lapse early. Leadership is
//! etcd's election API on `<prefix>leader`, held with a lease this
//! controller keeps alive: if the controller dies or loses etcd, the lease
//! lapses within its TTL and the next campaigner is elected; a controller
//! that lost etcd stops leading within that TTL too, since every renewal is
//! bounded by it ([`super::lease`]).
//!
//! Placement's in-flight counts are read often and may lag a moment (the
//! reservation's transaction re-checks them), so [`Store::list_relaxed`]
//! answers from an in-memory mirror of the prefix that a watch keeps
//! current, and reads etcd only until the watch runs.
//!
//! This adapter is the only part of the controller that speaks a wire
//! protocol (etcd's), as the file store is the only one that writes files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions,
    Identity, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};

use super::lease::{self, LeaseSession, Renewal};
use super::{Compare, Leadership, Store, StoreError, Versioned, Write};
use crate::retries::Retries;
use volmig_config::EtcdConfig;
use volmig_types::retry::RetryPolicy;

/// The store in etcd.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    lease_ttl: Duration,
    /// This controller's name in elections.
    name: String,
    /// The lease this controller last attached to each leased key.
    leases: std::sync::Mutex<HashMap<String, Attached>>,
    /// Prefixes read with [`Store::list_relaxed`], mirrored in memory and kept
    /// current by a watch; a prefix is here only while its watch runs.
    mirrors: Arc<Mirrors>,
}

/// A value this controller put under a lease of its own.
struct Attached {
    lease: i64,
    value: Vec<u8>,
}

/// Keys (without the store's prefix) of each mirrored prefix.
type Mirrors = std::sync::Mutex<HashMap<String, BTreeMap<String, Versioned>>>;

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn lock(
    mirrors: &Mirrors,
) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Versioned>>> {
    mirrors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies the watch's events to the mirror of `full` until the watch ends
/// (etcd cancelled it, e.g. after a compaction, or the connection broke) or
/// the store is gone; then drops the mirror, so reads go to etcd again and
/// the next one mirrors afresh.
async fn follow(mirrors: Weak<Mirrors>, full: String, prefix: String, mut stream: WatchStream) {
    loop {
        let message = stream.message().await;
        let Some(mirrors) = mirrors.upgrade() else {
            return;
        };
        let mut all = lock(&mirrors);
        let resp = match message {
            Ok(Some(resp)) if !resp.canceled() => resp,
            _ => {
                all.remove(&full);
                return;
            }
        };
        let Some(keys) = all.get_mut(&full) else {
            return;
        };
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(key) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
            else {
                continue;
            };
            match event.event_type() {
                EventType::Put => {
                    keys.insert(
                        key.to_string(),
                        Versioned {
                            value: kv.value().to_vec(),
                            revision: kv.mod_revision(),
                        },
                    );
                }
                EventType::Delete => {
                    keys.remove(key);
                }
            }
        }
    }
}

/// A request that never reached a member is tried on another, six times in
/// all, pausing 1.5 s in total.
const CONNECT_AGAIN: RetryPolicy =
    RetryPolicy::attempts(6, Duration::from_millis(100), 2, Duration::from_millis(400));

/// Whether the request failed to connect, so no member saw it.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("connect error"),
        _ => false,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))
}

/// The etcd lease behind leadership when another controller must take over
/// within `ttl` of the leader's death: one second shorter, because after the
/// lease lapses etcd still has to notice (it checks every 500 ms) and answer
/// the waiting campaign.
fn election_lease(ttl: Duration) -> Duration {
    ttl.saturating_sub(Duration::from_secs(1))
        .max(Duration::from_secs(1))
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
            leases: Default::default(),
            mirrors: Default::default(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Keys (without the prefix) and their values and revisions.
    fn versioned(&self, kvs: &[etcd_client::KeyValue]) -> Vec<(String, Versioned)> {
        kvs.iter()
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
            .collect()
    }

    /// Runs `call` with a client, and again when it failed before reaching
    /// etcd: a member that is down refuses the connection and the next
    /// attempt goes to another. Nothing was sent, so even a transaction is
    /// safe to repeat.
    async fn call<T, Fut>(&self, call: impl Fn(Client) -> Fut) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut retries = Retries::new(CONNECT_AGAIN);
        loop {
            match call(self.client.clone()).await {
                Err(e) if never_sent(&e) && retries.pause().await => {}
                other => return other.map_err(unavailable),
            }
        }
    }

    /// Every key under `full` (a prefix with the store's prefix) and the
    /// revision of the read; forgets the leased values it shows replaced.
    async fn read_prefix(
        &self,
        full: &str,
    ) -> Result<(Vec<(String, Versioned)>, Option<i64>), StoreError> {
        let resp = self
            .call(|mut c| {
                let full = full.to_string();
                async move { c.get(full, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        self.reconcile(full, resp.kvs());
        Ok((
            self.versioned(resp.kvs()),
            resp.header().map(|h| h.revision()),
        ))
    }

    /// Mirrors `full` (listed as `listed` at `revision`) from now on, when a
    /// watch from the next revision can be opened; without it, reads keep
    /// going to etcd.
    async fn mirror(&self, full: &str, revision: i64, listed: &[(String, Versioned)]) {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let Ok(stream) = self.client.clone().watch(full, Some(options)).await else {
            return;
        };
        lock(&self.mirrors).insert(full.to_string(), listed.iter().cloned().collect());
        tokio::spawn(follow(
            Arc::downgrade(&self.mirrors),
            full.to_string(),
            self.prefix.clone(),
            stream,
        ));
    }

    fn attached(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attached>> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the leased values under `full` (a prefix with the store's
    /// prefix) that `kvs`, a listing of it, shows replaced or gone.
    fn reconcile(&self, full: &str, kvs: &[etcd_client::KeyValue]) {
        let listed: HashMap<&[u8], &etcd_client::KeyValue> =
            kvs.iter().map(|kv| (kv.key(), kv)).collect();
        self.attached().retain(|key, a| {
            !key.starts_with(full)
                || listed
                    .get(key.as_bytes())
                    .is_some_and(|kv| kv.lease() == a.lease && kv.value() == a.value.as_slice())
        });
    }

    /// Renews `lease` once; whether it was still alive.
    async fn renew(&self, lease: i64) -> bool {
        // The call sends one keep-alive and fails when etcd answers that the
        // lease is gone; dropping the stream ends it.
        self.client.clone().lease_keep_alive(lease).await.is_ok()
    }

    /// Keeps `lease` alive every third of `ttl`; turns `lost` true when
    /// etcd says it expired or no renewal was confirmed for a whole TTL,
    /// however the connection behaves ([`lease::keep_alive`]).
    fn keep_alive(&self, lease: i64, ttl: Duration, lost: tokio::sync::watch::Sender<bool>) {
        let session = EtcdLease {
            client: self.client.clone(),
            lease,
            open: None,
        };
        tokio::spawn(lease::keep_alive(session, ttl, lost));
    }
}

/// An etcd lease and the keep-alive stream open for it, if any.
struct EtcdLease {
    client: Client,
    lease: i64,
    open: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

#[async_trait::async_trait]
impl LeaseSession for EtcdLease {
    async fn renew(&mut self) -> Renewal {
        if self.open.is_none() {
            // Opening the stream is a call of its own that can hang on a
            // dead connection; the caller's deadline bounds it.
            match self.client.lease_keep_alive(self.lease).await {
                Ok(open) => self.open = Some(open),
                Err(_) => return Renewal::Failed,
            }
        }
        let Some((keeper, stream)) = self.open.as_mut() else {
            return Renewal::Failed;
        };
        if keeper.keep_alive().await.is_err() {
            self.open = None;
            return Renewal::Failed;
        }
        match stream.message().await {
            Ok(Some(resp)) if resp.ttl() > 0 => Renewal::Alive,
            Ok(Some(_)) => Renewal::Expired,
            _ => {
                self.open = None;
                Renewal::Failed
            }
        }
    }

    fn reset(&mut self) {
        self.open = None;
    }

    async fn revoke(&mut self) {
        let _ = self.client.lease_revoke(self.lease).await;
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let key = self.key(key);
        let resp = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(|kv| Versioned {
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        Ok(self.read_prefix(&self.key(prefix)).await?.0)
    }

    async fn list_relaxed(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        // From memory once a watch mirrors the prefix: a plan then waits for
        // no etcd round trip at all.
        let full = self.key(prefix);
        if let Some(keys) = lock(&self.mirrors).get(&full) {
            return Ok(keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        }
        let (listed, revision) = self.read_prefix(&full).await?;
        if let Some(revision) = revision {
            self.mirror(&full, revision, &listed).await;
        }
        Ok(listed)
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
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    async fn put_leased(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let full = self.key(key);
        let mine = self
            .attached()
            .get(&full)
            .map(|a| (a.lease, a.value == value));
        let lease = match mine {
            Some((lease, unchanged)) if self.renew(lease).await => {
                if unchanged {
                    return Ok(());
                }
                lease
            }
            _ => self
                .call(|mut c| async move { c.lease_grant(seconds(ttl), None).await })
                .await?
                .id(),
        };
        self.call(|mut c| {
            let (key, value) = (full.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        self.attached().insert(full, Attached { lease, value });
        Ok(())
    }

    async fn lead(&self) -> Result<Leadership, StoreError> {
        let ttl = seconds(election_lease(self.lease_ttl));
        let lease = self
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?
            .id();
        let mut client = self.client.clone();
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Kept alive while campaigning too: a campaign waits as long as
        // another controller leads.
        self.keep_alive(lease, election_lease(self.lease_ttl), tx);
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
