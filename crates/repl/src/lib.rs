//! The replicated mail service: the one interface through which SMTP, POP3 and the
//! admin API reach accounts and mailboxes ([`Mail`]).
//!
//! All data of one address lives under one ring key, `hash(address)`, on the first
//! `replicas` live nodes clockwise from it (its replica set; the first coordinates).
//! - Writes (deliveries, tombstones, account changes) go to every member of the set
//!   and are acknowledged once `W` of them (a majority) have fsynced them.
//! - Reads merge `R` replicas (a majority), so `R + W > replicas` and a read after an
//!   acknowledged write sees it. Data are mergeable (see `cm-model`), so merging never
//!   conflicts. Mailbox reads ask every member and repair missing tombstones.
//! - [`antientropy`] compares digests with the other members of each set and copies
//!   what differs, which also covers takeover (a dead node's successor already holds
//!   its keys and copies them on), re-replication, and hand-off to joining nodes.
//! - Maildrop locks are leases granted by a majority of the replica set ([`MaildropLock`]).
//!
//! What this crate guarantees to its callers: a method returning `Ok` after a write
//! means the write is durable on a write quorum; [`MailError::Unavailable`] and
//! [`MailError::Storage`] mean it was not acknowledged and the client should retry
//! (the write may still have reached some replicas; retried deliveries can then
//! duplicate, never lose). It knows nothing of SMTP or POP3 syntax.

pub mod antientropy;
pub mod checks;
mod convert;
mod lease;
mod local;
pub mod placement;
mod server;

pub use lease::{LEASE_TTL, MaildropLock};
pub use local::{LocalReplica, digest};
pub use server::ReplicaService;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cm_model::{Account, HybridClock, Mailbox, MessageId, PasswordError};
use cm_net::RingHandle;
use cm_net::replica_pb as pb;
use cm_ring::{IdSpace, NodeRef};
use cm_store::{Store, StoreError, Write};
use cm_types::metrics;
use cm_types::{Address, RingKey};
use sha2::{Digest, Sha256};

use crate::convert::{account_from_pb, id_to_pb, mailbox_from_pb, writes_to_pb};
use crate::lease::LEASE_RENEW_PERIOD;

/// Deadline of one replication call; bodies of up to 25 MiB must fit in it.
pub const REPLICA_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a deletion that failed to reach a write quorum keeps retrying (QUIT
/// waits that long at most before it answers -ERR).
pub const DELETE_COMPLETION_MAX: Duration = Duration::from_secs(6);
/// Pause between two attempts of a deletion.
const DELETE_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How long a mailbox read waits for the other members of the replica set once a
/// read quorum answered (only a member that is slow, paused or cut off costs it).
pub const READ_STRAGGLER_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("no such account")]
    NoSuchAccount,
    #[error("account already exists")]
    AccountExists,
    #[error("maildrop is locked by another session")]
    InUse,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for MailError {
    fn from(error: StoreError) -> MailError {
        MailError::Storage(error.to_string())
    }
}

impl From<PasswordError> for MailError {
    fn from(error: PasswordError) -> MailError {
        match error {
            PasswordError::Hashing(reason) => MailError::Storage(reason),
            invalid => MailError::Invalid(invalid.to_string()),
        }
    }
}

/// A visible message of a maildrop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    pub id: MessageId,
    pub size: u64,
}

/// What the mail service needs to know about the node it runs on.
#[derive(Clone, Debug)]
pub struct MailConfig {
    /// This node's ring id; it tags the versions this node writes.
    pub node_id: u64,
    /// The identifier space; addresses hash into `[0, 2^bits)`.
    pub bits: u32,
    /// Lower-cased mail domains the ring serves.
    pub domains: Vec<String>,
    /// Copies of every key (`--replicas`).
    pub replicas: usize,
    /// The successor list length of the ring, to tell when it spans the whole ring.
    pub successor_list_len: usize,
}

impl MailConfig {
    /// `W` and `R`: a majority of the replicas, so that every read quorum meets every
    /// write quorum.
    pub fn quorum(&self) -> usize {
        self.replicas / 2 + 1
    }
}

/// The mail service. Cheap to clone; every clone shares one state.
#[derive(Clone)]
pub struct Mail {
    inner: Arc<Inner>,
}

struct Inner {
    config: MailConfig,
    local: Arc<LocalReplica>,
    /// `None` for a node without a ring (tests): every key then lives here only.
    ring: Option<RingHandle>,
    clock: HybridClock,
    /// Successful logins, so that a mail client polling every minute does not pay an
    /// argon2 hash each time: address -> (account version, salted digest of the
    /// password). An entry is only trusted for the exact account version it was
    /// made from, so a password change or deletion invalidates it.
    verified: Mutex<HashMap<Address, (cm_model::Version, [u8; 32])>>,
    verified_salt: [u8; 32],
}

impl Mail {
    pub fn new(config: MailConfig, local: Arc<LocalReplica>, ring: Option<RingHandle>) -> Mail {
        assert!(config.replicas >= 1, "at least one copy of every key");
        let clock = HybridClock::new(config.node_id);
        Mail {
            inner: Arc::new(Inner {
                config,
                local,
                ring,
                clock,
                verified: Mutex::new(HashMap::new()),
                verified_salt: rand::random(),
            }),
        }
    }

    /// A one-node service on `dir`, serving `localhost` and `example.org`, for tests.
    pub fn open_for_tests(dir: &Path) -> Mail {
        let store = Arc::new(Store::open(dir).expect("opening a test store"));
        let config = MailConfig {
            node_id: 1,
            bits: 64,
            domains: vec!["localhost".into(), "example.org".into()],
            replicas: 1,
            successor_list_len: 1,
        };
        Mail::new(config, Arc::new(LocalReplica::new(store, 64)), None)
    }

    pub fn config(&self) -> &MailConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<Store> {
        self.inner.local.store()
    }

    pub fn local(&self) -> &Arc<LocalReplica> {
        &self.inner.local
    }

    pub fn serves_domain(&self, domain: &str) -> bool {
        self.inner.config.domains.contains(&domain.to_lowercase())
    }

    fn key(&self, address: &Address) -> RingKey {
        self.inner.local.key(address)
    }

    fn me(&self) -> NodeRef {
        match &self.inner.ring {
            Some(ring) => ring.me(),
            None => NodeRef {
                id: self.inner.config.node_id,
                addr: "local".to_owned(),
            },
        }
    }

    // ----- placement -----

    /// The live replica set of `key`, coordinator first.
    pub async fn replica_set(&self, key: RingKey) -> Result<Vec<NodeRef>, MailError> {
        let Some(ring) = &self.inner.ring else {
            return Ok(vec![self.me()]);
        };
        let replicas = self.inner.config.replicas;
        let mut chain = vec![ring.me()];
        let successors = ring.successors();
        let alone = successors
            .first()
            .is_none_or(|first| first.id == chain[0].id);
        if !alone {
            chain.extend(successors.iter().cloned());
        }
        let whole_ring = alone || successors.len() < self.inner.config.successor_list_len;
        let space = IdSpace::new(self.inner.config.bits);
        let predecessor = ring.predecessor();
        if let Some(set) = placement::local_replica_set(
            space,
            &chain,
            predecessor.as_ref(),
            whole_ring,
            key,
            replicas,
        ) {
            return Ok(set);
        }
        let owner = ring
            .lookup(key)
            .await
            .map_err(|error| MailError::Unavailable(error.to_string()))?
            .owner;
        let state = ring.peers().get_state(&owner.addr).await.map_err(|_| {
            MailError::Unavailable(format!("coordinator {} does not answer", owner.addr))
        })?;
        Ok(placement::replica_set_from_owner(
            &owner,
            &state.successors,
            replicas,
        ))
    }

    // ----- one replica -----

    async fn remote<T, F>(
        &self,
        member: &NodeRef,
        op: &'static str,
        call: impl FnOnce(pb::replica_client::ReplicaClient<tonic::transport::Channel>) -> F,
    ) -> Result<T, MailError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let ring = self
            .inner
            .ring
            .as_ref()
            .expect("remote members exist only on a ring");
        ring.peers()
            .replica(&member.addr, op, REPLICA_CALL_TIMEOUT, call)
            .await
            .map_err(|_| {
                MailError::Unavailable(format!("replica {} did not answer {op}", member.addr))
            })
    }

    fn is_me(&self, member: &NodeRef) -> bool {
        member.id == self.inner.config.node_id
    }

    async fn apply_on(&self, member: &NodeRef, writes: &[Write]) -> Result<(), MailError> {
        if self.is_me(member) {
            return self.inner.local.apply(writes.to_vec()).await;
        }
        let batch = writes_to_pb(writes);
        metrics::REPLICA_WRITES_SENT.add(writes.len() as u64);
        self.remote(member, "apply", |mut client| async move {
            client.apply(batch).await
        })
        .await
        .map(|_| ())
    }

    /// `repair` reads (anti-entropy) are answered by a replica that is catching up;
    /// client reads are not, since it may miss acknowledged writes.
    async fn account_on(
        &self,
        member: &NodeRef,
        address: &Address,
        repair: bool,
    ) -> Result<Option<Account>, MailError> {
        if self.is_me(member) {
            if !repair {
                self.inner.local.check_serves_reads()?;
            }
            return self.inner.local.account(address).await;
        }
        let request = pb::AddressRequest {
            address: address.to_string(),
            repair,
        };
        let reply = self
            .remote(member, "read_account", |mut client| async move {
                client.read_account(request).await
            })
            .await?;
        reply.account.map(account_from_pb).transpose()
    }

    async fn mailbox_on(
        &self,
        member: &NodeRef,
        address: &Address,
        repair: bool,
    ) -> Result<Mailbox, MailError> {
        if self.is_me(member) {
            if !repair {
                self.inner.local.check_serves_reads()?;
            }
            return self.inner.local.mailbox(address).await;
        }
        let request = pb::AddressRequest {
            address: address.to_string(),
            repair,
        };
        let reply = self
            .remote(member, "read_mailbox", |mut client| async move {
                client.read_mailbox(request).await
            })
            .await?;
        mailbox_from_pb(reply)
    }

    async fn body_on(
        &self,
        member: &NodeRef,
        address: &Address,
        id: MessageId,
    ) -> Result<Option<Vec<u8>>, MailError> {
        if self.is_me(member) {
            return self.inner.local.body(address, id).await;
        }
        let request = pb::BodyRequest {
            address: address.to_string(),
            id: id_to_pb(id),
        };
        let reply = self
            .remote(member, "read_body", |mut client| async move {
                client.read_body(request).await
            })
            .await?;
        Ok(reply.body)
    }

    async fn accounts_on(&self, member: &NodeRef) -> Result<Vec<Account>, MailError> {
        if self.is_me(member) {
            return self.inner.local.accounts().await;
        }
        let reply = self
            .remote(member, "list_accounts", |mut client| async move {
                client.list_accounts(pb::Empty {}).await
            })
            .await?;
        reply.accounts.into_iter().map(account_from_pb).collect()
    }

    // ----- quorums -----

    /// Runs `op` on members of `set` until `needed` succeeded (a majority; 1 without
    /// a ring), and returns their answers. With [`Fanout::All`] every member is asked
    /// at once and the calls still running go on in the background (a write that
    /// reaches more replicas than needed is welcome). With [`Fanout::Needed`] this node
    /// is asked first and only as many others as are needed, one more for each that
    /// fails (reads: fewer calls, same guarantee). With [`Fanout::Everyone`] every
    /// member is asked and the answers of those that reply within the grace after
    /// the `needed`-th are returned too.
    async fn quorum<T, F, Fut>(
        &self,
        set: Vec<NodeRef>,
        what: &str,
        fanout: Fanout,
        op: F,
    ) -> Result<Vec<T>, MailError>
    where
        T: Send + 'static,
        F: Fn(Mail, NodeRef) -> Fut,
        Fut: Future<Output = Result<T, MailError>> + Send + 'static,
    {
        self.quorum_of(set, self.quorum_size(), what, fanout, op)
            .await
    }

    /// `W` and `R` on a ring; 1 for a node without one.
    fn quorum_size(&self) -> usize {
        if self.inner.ring.is_some() {
            self.inner.config.quorum()
        } else {
            1
        }
    }

    /// [`Mail::quorum`] with an explicit number of successes needed.
    async fn quorum_of<T, F, Fut>(
        &self,
        set: Vec<NodeRef>,
        needed: usize,
        what: &str,
        fanout: Fanout,
        op: F,
    ) -> Result<Vec<T>, MailError>
    where
        T: Send + 'static,
        F: Fn(Mail, NodeRef) -> Fut,
        Fut: Future<Output = Result<T, MailError>> + Send + 'static,
    {
        if set.len() < needed {
            metrics::QUORUM_FAILURES.increment();
            let reason = format!(
                "{what}: {} live replica(s) of {} reachable, {needed} needed",
                set.len(),
                self.inner.config.replicas
            );
            tracing::warn!(%reason, "quorum not reached");
            return Err(MailError::Unavailable(reason));
        }
        let mut members = set;
        members.sort_by_key(|member| !self.is_me(member));
        let n_first = match fanout {
            Fanout::All | Fanout::Everyone { .. } => members.len(),
            Fanout::Needed => needed,
        };
        let (sender, mut receiver) = tokio::sync::mpsc::channel(members.len());
        let spawn_call = |member: NodeRef| {
            let call = op(self.clone(), member.clone());
            let sender = sender.clone();
            tokio::spawn(async move {
                let outcome = call.await;
                let _ = sender.send((member, outcome)).await;
            });
        };
        let mut untried = members.split_off(n_first).into_iter();
        let mut n_pending = members.len();
        for member in members {
            spawn_call(member);
        }
        let mut successes = Vec::with_capacity(needed);
        let mut failures = Vec::new();
        let mut stragglers_until = None;
        while n_pending > 0 {
            let next = match stragglers_until {
                None => receiver.recv().await,
                Some(deadline) => match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((member, outcome)) = next else {
                break;
            };
            n_pending -= 1;
            match outcome {
                Ok(value) => {
                    successes.push(value);
                    if successes.len() == needed {
                        match fanout {
                            Fanout::Everyone { grace } => {
                                stragglers_until = Some(tokio::time::Instant::now() + grace)
                            }
                            Fanout::All | Fanout::Needed => return Ok(successes),
                        }
                    }
                }
                Err(error) => {
                    failures.push(format!("{}: {error}", member.addr));
                    if let Some(next) = untried.next() {
                        spawn_call(next);
                        n_pending += 1;
                    }
                }
            }
        }
        if successes.len() >= needed {
            return Ok(successes);
        }
        metrics::QUORUM_FAILURES.increment();
        let reason = format!(
            "{what}: {} of {needed} replicas answered ({})",
            successes.len(),
            failures.join("; ")
        );
        tracing::warn!(%reason, "quorum not reached");
        Err(MailError::Unavailable(reason))
    }

    async fn write_quorum(&self, key: RingKey, writes: Vec<Write>) -> Result<(), MailError> {
        let set = self.replica_set(key).await?;
        self.write_quorum_to(set, writes).await
    }

    /// A quorum write to a replica set the caller already computed.
    async fn write_quorum_to(
        &self,
        set: Vec<NodeRef>,
        writes: Vec<Write>,
    ) -> Result<(), MailError> {
        let writes = Arc::new(writes);
        self.quorum(set, "write", Fanout::All, move |mail, member| {
            let writes = writes.clone();
            async move { mail.apply_on(&member, &writes).await }
        })
        .await
        .map(|_| ())
    }

    /// The merged account record (deleted ones included) from a read quorum.
    async fn read_account(&self, address: &Address) -> Result<Option<Account>, MailError> {
        let set = self.replica_set(self.key(address)).await?;
        let target = address.clone();
        let answers = self
            .quorum(set, "read account", Fanout::Needed, move |mail, member| {
                let address = target.clone();
                async move { mail.account_on(&member, &address, false).await }
            })
            .await?;
        let merged = answers.into_iter().flatten().reduce(Account::merge);
        if let Some(account) = &merged {
            self.inner.clock.observe(account.version);
        }
        Ok(merged)
    }

    /// The merged mailbox from every member of the replica set that answers, `R` at
    /// least. Asking all of them, not just `R`, matters when the set has just changed
    /// (a healed partition, a restarted or refilled replica): a tombstone written to
    /// `W` members of an older set may then sit on one member of the current set
    /// only, and a read of `R` members could miss it and list a deleted message again
    /// (found by the fault harness). Members that lack tombstones the others hold get
    /// them at once (read repair) instead of at the next anti-entropy round.
    async fn read_mailbox(&self, address: &Address) -> Result<Mailbox, MailError> {
        let key = self.key(address);
        let set = self.replica_set(key).await?;
        let target = address.clone();
        let fanout = Fanout::Everyone {
            grace: READ_STRAGGLER_GRACE,
        };
        let answers = self
            .quorum(set, "read mailbox", fanout, move |mail, member| {
                let address = target.clone();
                async move {
                    let mailbox = mail.mailbox_on(&member, &address, false).await?;
                    Ok((member, mailbox))
                }
            })
            .await?;
        let mut merged = Mailbox::default();
        for (_, answer) in &answers {
            merged.merge(answer);
        }
        for (member, answer) in &answers {
            let missing: Vec<Write> = merged
                .tombstones
                .iter()
                .filter(|(id, _)| !answer.tombstones.contains_key(id))
                .map(|(id, deleted_ms)| Write::Tombstone {
                    key,
                    address: address.clone(),
                    id: *id,
                    deleted_ms: *deleted_ms,
                })
                .collect();
            if missing.is_empty() {
                continue;
            }
            let (mail, member) = (self.clone(), member.clone());
            tokio::spawn(async move {
                let n_writes = missing.len() as u64;
                match mail.apply_on(&member, &missing).await {
                    Ok(()) => metrics::READ_REPAIRS.add(n_writes),
                    Err(error) => {
                        tracing::debug!(member = %member.addr, %error, "read repair failed")
                    }
                }
            });
        }
        Ok(merged)
    }

    // ----- accounts -----

    async fn account(&self, address: &Address) -> Result<Option<Account>, MailError> {
        Ok(self
            .read_account(address)
            .await?
            .filter(|account| !account.deleted))
    }

    pub async fn account_exists(&self, address: &Address) -> Result<bool, MailError> {
        Ok(self.account(address).await?.is_some())
    }

    /// Whether `password` opens `address`. Unknown accounts and wrong passwords are
    /// both `Ok(false)`: callers must not tell them apart to the peer.
    pub async fn authenticate(
        &self,
        address: &Address,
        password: &[u8],
    ) -> Result<bool, MailError> {
        let Some(account) = self.account(address).await? else {
            return Ok(false);
        };
        let digest = self.password_digest(password);
        let cached = self
            .inner
            .verified
            .lock()
            .expect("cache mutex poisoned")
            .get(address)
            .copied();
        if cached == Some((account.version, digest)) {
            return Ok(true);
        }
        let password = password.to_vec();
        let version = account.version;
        let matches = local::blocking(move || account.verify(&password)).await?;
        if matches {
            self.inner
                .verified
                .lock()
                .expect("cache mutex poisoned")
                .insert(address.clone(), (version, digest));
        }
        Ok(matches)
    }

    fn password_digest(&self, password: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.inner.verified_salt);
        hasher.update(password);
        hasher.finalize().into()
    }

    /// Creates an account; [`MailError::AccountExists`] if a live one has the address.
    pub async fn create_account(&self, address: &Address, password: &str) -> Result<(), MailError> {
        if !self.serves_domain(address.domain()) {
            return Err(MailError::Invalid(format!(
                "domain {} is not served by this ring",
                address.domain()
            )));
        }
        if self.account_exists(address).await? {
            return Err(MailError::AccountExists);
        }
        self.write_account(address, password).await
    }

    pub async fn set_password(&self, address: &Address, password: &str) -> Result<(), MailError> {
        if !self.account_exists(address).await? {
            return Err(MailError::NoSuchAccount);
        }
        self.write_account(address, password).await
    }

    /// Deletes an account (a last-writer-wins tombstone). Its mailbox is kept.
    pub async fn delete_account(&self, address: &Address) -> Result<(), MailError> {
        let Some(account) = self.account(address).await? else {
            return Err(MailError::NoSuchAccount);
        };
        let version = self.inner.clock.tick(now_ms());
        let tombstone = Account {
            version,
            deleted: true,
            ..account
        };
        self.write_quorum(
            self.key(address),
            vec![Write::Account {
                key: self.key(address),
                account: tombstone,
            }],
        )
        .await
    }

    async fn write_account(&self, address: &Address, password: &str) -> Result<(), MailError> {
        let version = self.inner.clock.tick(now_ms());
        let (address_owned, password) = (address.clone(), password.to_owned());
        let account =
            local::blocking(move || Account::new(address_owned, &password, version)).await??;
        self.write_quorum(
            self.key(address),
            vec![Write::Account {
                key: self.key(address),
                account,
            }],
        )
        .await
    }

    /// Live accounts of the whole ring, sorted by address. Walks the ring and merges
    /// every node's records; nodes that do not answer are skipped.
    pub async fn list_accounts(&self) -> Result<Vec<Address>, MailError> {
        let nodes = match &self.inner.ring {
            Some(ring) => ring.cluster().await,
            None => vec![self.me()],
        };
        let mut merged: BTreeMap<Address, Account> = BTreeMap::new();
        for node in nodes {
            let accounts = match self.accounts_on(&node).await {
                Ok(accounts) => accounts,
                Err(error) => {
                    tracing::warn!(node = %node.addr, %error, "skipping a node while listing accounts");
                    continue;
                }
            };
            for account in accounts {
                let merged_account = match merged.remove(&account.address) {
                    Some(existing) => existing.merge(account),
                    None => account,
                };
                merged.insert(merged_account.address.clone(), merged_account);
            }
        }
        Ok(merged
            .into_values()
            .filter(|account| !account.deleted)
            .map(|account| account.address)
            .collect())
    }

    // ----- mail -----

    /// Stores one copy of `message` per recipient, each under its own id, and
    /// returns once every copy is durable on a write quorum of its replica set.
    pub async fn deliver(
        &self,
        recipients: &[Address],
        message: Bytes,
    ) -> Result<Vec<MessageId>, MailError> {
        let arrival_ms = now_ms();
        let mut ids = Vec::with_capacity(recipients.len());
        let mut by_key: BTreeMap<RingKey, Vec<Write>> = BTreeMap::new();
        for recipient in recipients {
            let id = MessageId::generate(arrival_ms);
            ids.push(id);
            let key = self.key(recipient);
            by_key.entry(key).or_default().push(Write::Message {
                key,
                address: recipient.clone(),
                id,
                body: message.to_vec(),
            });
        }
        let mut writes = tokio::task::JoinSet::new();
        for (key, batch) in by_key {
            let mail = self.clone();
            writes.spawn(async move { mail.write_quorum(key, batch).await });
        }
        while let Some(joined) = writes.join_next().await {
            joined
                .map_err(|error| MailError::Storage(format!("delivery task failed: {error}")))??;
        }
        Ok(ids)
    }

    /// Takes the maildrop lease of `address` for one POP3 session: granted by every
    /// member of the replica set that answers, and by at least a majority. Two
    /// sessions can then never both hold it, even while a join or a crash moves the
    /// set: any majority of the new set meets the members holding the old lease. The
    /// renewal re-runs the same round on the current set, which carries the lease to
    /// members that joined it.
    pub async fn lock_maildrop(&self, address: &Address) -> Result<MaildropLock, MailError> {
        let key = self.key(address);
        let lease_id: u64 = rand::random();
        let holders: SharedHolders = Arc::default();
        let set = self.replica_set(key).await?;
        let outcome = self.lease_round(set, address, lease_id, &holders).await;
        let release = release_everywhere(self.clone(), address.clone(), lease_id, holders.clone());
        match outcome {
            LeaseOutcome::Granted => {}
            LeaseOutcome::Refused => {
                release();
                return Err(MailError::InUse);
            }
            LeaseOutcome::NoQuorum(reason) => {
                release();
                return Err(MailError::Unavailable(reason));
            }
        }
        let held = Arc::new(AtomicBool::new(true));
        let renewal = {
            let (mail, address, held, holders) =
                (self.clone(), address.clone(), held.clone(), holders.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_RENEW_PERIOD).await;
                    let outcome = match mail.replica_set(key).await {
                        Ok(set) => mail.lease_round(set, &address, lease_id, &holders).await,
                        Err(error) => LeaseOutcome::NoQuorum(error.to_string()),
                    };
                    if !matches!(outcome, LeaseOutcome::Granted) {
                        tracing::warn!(%address, ?outcome, "maildrop lease lost");
                        held.store(false, Ordering::Release);
                        return;
                    }
                }
            })
        };
        Ok(MaildropLock {
            address: address.clone(),
            key,
            lease_id,
            held,
            renewal: Some(renewal),
            on_release: Mutex::new(Some(Box::new(release))),
        })
    }

    /// Asks every member of `set` to grant (or extend) the lease. Decides as soon as
    /// one member refuses (another session holds it there) or a majority granted;
    /// members answering later still record themselves in `holders` for the release.
    async fn lease_round(
        &self,
        set: Vec<NodeRef>,
        address: &Address,
        lease_id: u64,
        holders: &SharedHolders,
    ) -> LeaseOutcome {
        let needed = self.quorum_size();
        if set.len() < needed {
            return LeaseOutcome::NoQuorum(format!(
                "{} live replica(s), {needed} needed",
                set.len()
            ));
        }
        let (sender, mut receiver) = tokio::sync::mpsc::channel(set.len());
        for member in set {
            let (mail, address, holders, sender) = (
                self.clone(),
                address.clone(),
                holders.clone(),
                sender.clone(),
            );
            tokio::spawn(async move {
                let granted = mail
                    .lease_call(&member, &address, lease_id, LeaseCall::Acquire)
                    .await;
                if matches!(granted, Ok(true)) {
                    let late = {
                        let mut holders = holders.lock().expect("lease holders mutex poisoned");
                        if !holders.released
                            && !holders.nodes.iter().any(|holder| holder.id == member.id)
                        {
                            holders.nodes.push(member.clone());
                        }
                        holders.released
                    };
                    if late {
                        // The lease was released (or refused) before this grant came
                        // back: give it back now, or it would block the maildrop
                        // until it expires.
                        let _ = mail
                            .lease_call(&member, &address, lease_id, LeaseCall::Release)
                            .await;
                    }
                }
                let _ = sender.send(granted).await;
            });
        }
        drop(sender);
        let (mut n_granted, mut n_failed) = (0, 0);
        while let Some(granted) = receiver.recv().await {
            match granted {
                Ok(true) => n_granted += 1,
                Ok(false) => return LeaseOutcome::Refused,
                Err(_) => n_failed += 1,
            }
            if n_granted == needed {
                return LeaseOutcome::Granted;
            }
        }
        LeaseOutcome::NoQuorum(format!(
            "{n_granted} of {needed} replicas granted the lease, {n_failed} did not answer"
        ))
    }

    async fn lease_call(
        &self,
        coordinator: &NodeRef,
        address: &Address,
        lease_id: u64,
        call: LeaseCall,
    ) -> Result<bool, MailError> {
        let leases = &self.inner.local.leases;
        if self.is_me(coordinator) {
            return Ok(match call {
                LeaseCall::Acquire => leases.acquire(address, lease_id, LEASE_TTL),
                LeaseCall::Release => {
                    leases.release(address, lease_id);
                    true
                }
            });
        }
        let request = pb::LeaseRequest {
            address: address.to_string(),
            lease_id,
            ttl_ms: LEASE_TTL.as_millis() as u64,
        };
        match call {
            LeaseCall::Acquire => self
                .remote(coordinator, "acquire_lease", |mut client| async move {
                    client.acquire_lease(request).await
                })
                .await
                .map(|reply| reply.granted),
            LeaseCall::Release => self
                .remote(coordinator, "release_lease", |mut client| async move {
                    client.release_lease(request).await
                })
                .await
                .map(|_| true),
        }
    }

    /// Visible messages of the locked maildrop (merged from a read quorum), oldest first.
    pub async fn list(&self, lock: &MaildropLock) -> Result<Vec<MessageInfo>, MailError> {
        let mailbox = self.read_mailbox(lock.address()).await?;
        Ok(mailbox
            .visible()
            .map(|(id, size)| MessageInfo { id, size })
            .collect())
    }

    /// The message's octets, or `None` if no replica has it (any longer).
    pub async fn retrieve(
        &self,
        lock: &MaildropLock,
        id: MessageId,
    ) -> Result<Option<Bytes>, MailError> {
        let address = lock.address();
        if let Some(body) = self.inner.local.body(address, id).await? {
            return Ok(Some(Bytes::from(body)));
        }
        let mut last_error = None;
        for member in self.replica_set(lock.key()).await? {
            if self.is_me(&member) {
                continue;
            }
            match self.body_on(&member, address, id).await {
                Ok(Some(body)) => return Ok(Some(Bytes::from(body))),
                Ok(None) => {}
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            Some(error) => Err(error),
            None => Ok(None),
        }
    }

    /// Deletes messages of the locked maildrop as tombstones on a write quorum. On
    /// `Err` the deletion was not acknowledged and, as far as this node can tell,
    /// removed nothing (DESIGN.md §6):
    /// - before writing, a write quorum of the replica set must answer a ring call, so
    ///   the common refusal (replicas crashed or cut off) writes nothing anywhere;
    /// - this node's own copy, if it is a replica, is written only after `W - 1`
    ///   others hold theirs (fault seed 230: the others failed, the local copy
    ///   survived and anti-entropy spread it);
    /// - once the writes have started, a failure is not given up at once: a
    ///   tombstone that reached some replica will be spread by anti-entropy, and a
    ///   lost acknowledgement cannot be told from a failed write. The deletion is
    ///   retried on the members that lack it until a write quorum holds it, for
    ///   [`DELETE_COMPLETION_MAX`] at most (fault seed 753: a session on a node
    ///   outside the set reached one of three replicas, answered -ERR, and the
    ///   deletion took effect later).
    ///
    /// What remains: a tombstone that landed on some replica while a write quorum
    /// stayed out of reach for all of [`DELETE_COMPLETION_MAX`].
    pub async fn delete(&self, lock: &MaildropLock, ids: &[MessageId]) -> Result<(), MailError> {
        if !lock.is_held() {
            return Err(MailError::Unavailable(
                "the maildrop lease was lost".to_owned(),
            ));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let mut set = self.replica_set(lock.key()).await?;
        self.check_write_quorum_answers(&set).await?;
        let deleted_ms = now_ms();
        let writes: Arc<Vec<Write>> = Arc::new(
            ids.iter()
                .map(|id| Write::Tombstone {
                    key: lock.key(),
                    address: lock.address().clone(),
                    id: *id,
                    deleted_ms,
                })
                .collect(),
        );
        let holders: Arc<Mutex<Vec<u64>>> = Arc::default();
        let deadline = tokio::time::Instant::now() + DELETE_COMPLETION_MAX;
        let mut n_attempts = 0;
        loop {
            n_attempts += 1;
            let attempt = self.write_deletion(set, writes.clone(), holders.clone());
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_) => MailError::Unavailable(format!(
                    "the deletion reached no write quorum within {DELETE_COMPLETION_MAX:?}"
                )),
            };
            if tokio::time::Instant::now() + DELETE_RETRY_PAUSE >= deadline {
                return Err(error);
            }
            if n_attempts == 1 {
                tracing::warn!(address = %lock.address(), %error, "deletion not on a write quorum yet; retrying");
            }
            tokio::time::sleep(DELETE_RETRY_PAUSE).await;
            set = self.replica_set(lock.key()).await?;
        }
    }

    /// One attempt of a deletion: the members of `set` that do not hold the
    /// tombstones yet (`holders`, node ids, grows as acknowledgements arrive, also
    /// late ones) get them; this node's copy, if it is a member, only once `W - 1`
    /// others hold theirs.
    async fn write_deletion(
        &self,
        set: Vec<NodeRef>,
        writes: Arc<Vec<Write>>,
        holders: Arc<Mutex<Vec<u64>>>,
    ) -> Result<(), MailError> {
        let here = set.iter().any(|member| self.is_me(member));
        let held = |member: &NodeRef| {
            holders
                .lock()
                .expect("deletion holders mutex poisoned")
                .contains(&member.id)
        };
        let (holding, lacking): (Vec<NodeRef>, Vec<NodeRef>) = set
            .into_iter()
            .filter(|member| !self.is_me(member))
            .partition(|member| held(member));
        let needed_elsewhere = self.quorum_size() - usize::from(here);
        if holding.len() < needed_elsewhere {
            let (writes, holders) = (writes.clone(), holders.clone());
            self.quorum_of(
                lacking,
                needed_elsewhere - holding.len(),
                "delete",
                Fanout::All,
                move |mail, member| {
                    let (writes, holders) = (writes.clone(), holders.clone());
                    async move {
                        mail.apply_on(&member, &writes).await?;
                        holders
                            .lock()
                            .expect("deletion holders mutex poisoned")
                            .push(member.id);
                        Ok(())
                    }
                },
            )
            .await?;
        }
        if here {
            self.inner.local.apply(writes.to_vec()).await?;
        }
        Ok(())
    }

    /// Fails unless a write quorum of `set` answers a ring call now.
    async fn check_write_quorum_answers(&self, set: &[NodeRef]) -> Result<(), MailError> {
        let Some(ring) = &self.inner.ring else {
            return Ok(());
        };
        let ring = ring.clone();
        self.quorum(
            set.to_vec(),
            "check replicas",
            Fanout::Needed,
            move |mail, member| {
                let ring = ring.clone();
                async move {
                    if mail.is_me(&member) {
                        return Ok(());
                    }
                    match ring.peers().get_state(&member.addr).await {
                        Ok(state) if state.node.id == member.id => Ok(()),
                        _ => Err(MailError::Unavailable(format!(
                            "replica {} does not answer",
                            member.addr
                        ))),
                    }
                }
            },
        )
        .await
        .map(|_| ())
    }

    /// This node's own replica of one address, for operators (`/api/replicas/...`).
    pub async fn local_replica(
        &self,
        address: &Address,
    ) -> Result<(Option<Account>, Mailbox), MailError> {
        Ok((
            self.inner.local.account(address).await?,
            self.inner.local.mailbox(address).await?,
        ))
    }
}

#[derive(Clone, Copy, Debug)]
enum Fanout {
    /// Every member at once; done at the `needed`-th success.
    All,
    /// This node first and only as many others as needed, one more per failure.
    Needed,
    /// Every member at once; after the `needed`-th success, the others still get
    /// this long to answer.
    Everyone { grace: Duration },
}

#[derive(Debug)]
enum LeaseOutcome {
    Granted,
    /// Some member holds the lease for another session.
    Refused,
    NoQuorum(String),
}

/// The members that granted one session's lease, and whether it was released: a
/// grant that arrives after the release gives itself back.
#[derive(Default)]
struct LeaseHolders {
    nodes: Vec<NodeRef>,
    released: bool,
}

type SharedHolders = Arc<Mutex<LeaseHolders>>;

/// Releases the lease at every member that granted it: at once here, in the
/// background elsewhere (a release that does not arrive expires with the TTL).
fn release_everywhere(
    mail: Mail,
    address: Address,
    lease_id: u64,
    holders: SharedHolders,
) -> impl FnOnce() + Send + 'static {
    move || {
        let nodes = {
            let mut holders = holders.lock().expect("lease holders mutex poisoned");
            holders.released = true;
            std::mem::take(&mut holders.nodes)
        };
        for holder in nodes {
            if mail.is_me(&holder) {
                mail.inner.local.leases.release(&address, lease_id);
            } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (mail, address) = (mail.clone(), address.clone());
                runtime.spawn(async move {
                    let _ = mail
                        .lease_call(&holder, &address, lease_id, LeaseCall::Release)
                        .await;
                });
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum LeaseCall {
    /// Grants or extends (acquiring again with the same lease id renews it).
    Acquire,
    Release,
}

/// Milliseconds since the Unix epoch, the wall-time input of the hybrid clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod ring_tests;
#[cfg(test)]
mod tests;
