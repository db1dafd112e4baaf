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

//!
//! Reading order: [`Mail`] (this file) and its operations by concern — [`accounts`],
//! [`mailbox`] (deliveries, reads with read repair), [`deletion`], [`lease`]
//! (maildrop leases), [`outbound`] (the outbound queue's entries), [`imap`]
//! (folders, flags, UIDs and IDLE's wake-ups) — all built on [`quorum`] (the fan-out to a replica set) and
//! on the seam in [`replica`]: one trait for what a member of a replica set can do,
//! implemented by this node's [`LocalReplica`] and by [`remote::RemoteReplica`]
//! over gRPC, chosen in one place ([`placement::RingMembers`]). [`server`] answers
//! other nodes' calls; [`antientropy`] reconciles replicas in the background.

mod accounts;
pub mod antientropy;
pub mod checks;
mod convert;
mod deletion;
pub mod imap;
mod lease;
mod local;
mod mailbox;
pub mod outbound;
pub mod placement;
mod quorum;
pub mod remote;
pub mod replica;
mod server;

/// The replication protocol (`proto/replica.proto`): node-to-node reads and writes
/// of replicas, maildrop leases and anti-entropy digests.
pub mod pb {
    tonic::include_proto!("chordmail.replica.v1");
}

pub use deletion::DELETE_COMPLETION_MAX;
pub use lease::{LEASE_TTL, LeaseScope, MaildropLock};
pub use local::{FolderWatchers, LocalReplica, digest};
pub use remote::{MESSAGE_BYTES_MAX_ON_WIRE, REPLICA_CALL_TIMEOUT};
pub use replica::{Differing, Digests, Members, ReadFor, Replica};
pub use server::ReplicaService;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cm_model::{HybridClock, MessageId, PasswordError};
use cm_net::RingHandle;
use cm_ring::{IdSpace, NodeRef};
use cm_store::{Store, StoreError};
use cm_types::{Address, RingKey};

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
    /// Where the replica set of a key is and how to reach each member.
    members: Arc<dyn Members>,
    /// `None` for a node without a ring (tests); anti-entropy's catch-up needs it.
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
    /// The service of a node on `ring`; without one, every key lives on this node.
    pub fn new(config: MailConfig, local: Arc<LocalReplica>, ring: Option<RingHandle>) -> Mail {
        let members: Arc<dyn Members> = match &ring {
            Some(ring) => Arc::new(placement::RingMembers {
                ring: ring.clone(),
                local: local.clone(),
                space: IdSpace::new(config.bits),
                replicas: config.replicas,
                successor_list_len: config.successor_list_len,
            }),
            None => {
                assert_eq!(config.replicas, 1, "a node without a ring holds one copy");
                Arc::new(replica::Solo {
                    me: NodeRef {
                        id: config.node_id,
                        addr: "local".to_owned(),
                    },
                    local: local.clone(),
                })
            }
        };
        Mail::with_members(config, local, members, ring)
    }

    /// The service with the given members (tests put in-memory ones here).
    pub fn with_members(
        config: MailConfig,
        local: Arc<LocalReplica>,
        members: Arc<dyn Members>,
        ring: Option<RingHandle>,
    ) -> Mail {
        assert!(config.replicas >= 1, "at least one copy of every key");
        assert_eq!(
            members.me().id,
            config.node_id,
            "the members' node is this node"
        );
        let clock = HybridClock::new(config.node_id);
        let mail = Mail {
            inner: Arc::new(Inner {
                config,
                local,
                members,
                ring,
                clock,
                verified: Mutex::new(HashMap::new()),
                verified_salt: rand::random(),
            }),
        };
        // Weak: the replica belongs to the service, not the other way round.
        let service = Arc::downgrade(&mail.inner);
        mail.inner
            .local
            .watchers()
            .set_notifier(Box::new(move |nodes, address, folder| {
                if let Some(inner) = service.upgrade() {
                    Mail { inner }.notify_subscribers(nodes, address, folder);
                }
            }));
        mail
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

    /// The live replica set of `key`, coordinator first.
    pub async fn replica_set(&self, key: RingKey) -> Result<Vec<NodeRef>, MailError> {
        self.inner.members.replica_set(key).await
    }

    fn key(&self, address: &Address) -> RingKey {
        self.inner.local.key(address)
    }

    fn me(&self) -> NodeRef {
        self.inner.members.me()
    }

    /// Whether `node` is this node: its copy is asked first and, for deletions,
    /// written last.
    fn is_me(&self, node: &NodeRef) -> bool {
        node.id == self.inner.config.node_id
    }

    /// The member of a replica set on `node`, local or remote.
    fn member(&self, node: &NodeRef) -> Arc<dyn Replica> {
        self.inner.members.member(node)
    }
}

/// Milliseconds since the Unix epoch, the wall-time input of the hybrid clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod seam_tests;
#[cfg(test)]
mod tests;
