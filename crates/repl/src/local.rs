//! This node's replica of every key it holds: the store, its group committer and
//! the maildrop leases of the mailboxes this node coordinates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cm_model::{Account, FolderId, FolderState, Folders, Mailbox, MessageId, Outbound};
use cm_ring::NodeRef;
use cm_store::{GroupCommitter, Store, Write};
use cm_types::{Address, RingKey, hash64, key_of_address, key_of_outbound};

use crate::MailError;
use crate::lease::LeaseTable;

pub struct LocalReplica {
    /// Set while a node that started with an empty store is being handed its data:
    /// it then answers no client read, which could miss acknowledged writes.
    syncing: std::sync::atomic::AtomicBool,
    store: Arc<Store>,
    committer: GroupCommitter,
    bits: u32,
    pub(crate) leases: LeaseTable,
    pub(crate) watchers: FolderWatchers,
}

/// Folders watched at once by sessions of this node at most before the registry
/// drops the entries nobody watches any more.
const WATCHED_FOLDERS_PRUNE_AT: usize = 4096;
/// Folders other nodes may subscribe to here at once; past it, subscriptions to
/// new folders are ignored (those sessions fall back to polling).
const SUBSCRIBED_FOLDERS_MAX: usize = 65_536;
/// Nodes subscribed to one folder at most (a node subscribes once for all its
/// sessions on the folder).
const SUBSCRIBERS_PER_FOLDER_MAX: usize = 64;

/// A node to tell of writes to a folder, until the instant.
type Subscription = (NodeRef, std::time::Instant);

/// Tells other nodes that a folder changed: (nodes, address, folder). Set by
/// `Mail`, which knows how to reach them.
pub type Notifier = Box<dyn Fn(Vec<NodeRef>, Address, FolderId) + Send + Sync>;

/// The IMAP sessions that wait for a folder to change (IDLE). For this node's
/// sessions, a `watch` channel per (address, folder), bumped whenever a write to
/// that folder is applied to this replica, whoever sent it. For sessions on nodes
/// outside the folder's replica set, subscriptions with an expiry: each write
/// applied here is announced to them through the notifier.
#[derive(Default)]
pub struct FolderWatchers {
    senders: Mutex<HashMap<(Address, FolderId), tokio::sync::watch::Sender<u64>>>,
    subscribers: Mutex<HashMap<(Address, FolderId), Vec<Subscription>>>,
    notifier: std::sync::OnceLock<Notifier>,
}

impl FolderWatchers {
    /// A receiver that sees a new value after every write to the folder here.
    pub fn watch(&self, address: &Address, folder: FolderId) -> tokio::sync::watch::Receiver<u64> {
        let mut senders = self.senders.lock().expect("watchers mutex poisoned");
        if senders.len() >= WATCHED_FOLDERS_PRUNE_AT {
            senders.retain(|_, sender| sender.receiver_count() > 0);
        }
        senders
            .entry((address.clone(), folder))
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    /// Records that `node` wants to hear of writes to the folder for `ttl`.
    pub fn subscribe(
        &self,
        address: &Address,
        folder: FolderId,
        node: &NodeRef,
        ttl: std::time::Duration,
    ) {
        let now = std::time::Instant::now();
        let name = (address.clone(), folder);
        let mut subscribers = self.subscribers.lock().expect("subscribers mutex poisoned");
        if subscribers.len() >= SUBSCRIBED_FOLDERS_MAX && !subscribers.contains_key(&name) {
            subscribers.retain(|_, nodes| {
                nodes.retain(|(_, expires)| *expires > now);
                !nodes.is_empty()
            });
            if subscribers.len() >= SUBSCRIBED_FOLDERS_MAX {
                return;
            }
        }
        let nodes = subscribers.entry(name).or_default();
        nodes.retain(|(known, expires)| known.id != node.id && *expires > now);
        if nodes.len() < SUBSCRIBERS_PER_FOLDER_MAX {
            nodes.push((node.clone(), now + ttl));
        }
    }

    /// Nodes subscribed to the folder here now.
    pub fn n_subscribers(&self, address: &Address, folder: FolderId) -> usize {
        let now = std::time::Instant::now();
        let subscribers = self.subscribers.lock().expect("subscribers mutex poisoned");
        subscribers
            .get(&(address.clone(), folder))
            .map_or(0, |nodes| {
                nodes.iter().filter(|(_, expires)| *expires > now).count()
            })
    }

    /// How this replica reaches subscribed nodes; set once, by `Mail`.
    pub fn set_notifier(&self, notifier: Notifier) {
        if self.notifier.set(notifier).is_err() {
            tracing::debug!("a notifier was already set");
        }
    }

    /// A write to the folder was applied here: wakes this node's sessions and
    /// tells the subscribed nodes.
    fn changed(&self, address: &Address, folder: FolderId) {
        self.fire(address, folder);
        let now = std::time::Instant::now();
        let nodes: Vec<NodeRef> = {
            let mut subscribers = self.subscribers.lock().expect("subscribers mutex poisoned");
            let name = (address.clone(), folder);
            let Some(nodes) = subscribers.get_mut(&name) else {
                return;
            };
            nodes.retain(|(_, expires)| *expires > now);
            let live = nodes.iter().map(|(node, _)| node.clone()).collect();
            if nodes.is_empty() {
                subscribers.remove(&name);
            }
            live
        };
        if let (false, Some(notifier)) = (nodes.is_empty(), self.notifier.get()) {
            notifier(nodes, address.clone(), folder);
        }
    }

    /// Wakes this node's sessions watching the folder.
    pub(crate) fn fire(&self, address: &Address, folder: FolderId) {
        let mut senders = self.senders.lock().expect("watchers mutex poisoned");
        let name = (address.clone(), folder);
        let Some(sender) = senders.get(&name) else {
            return;
        };
        if sender.receiver_count() == 0 {
            senders.remove(&name);
        } else {
            sender.send_modify(|n_changes| *n_changes = n_changes.wrapping_add(1));
        }
    }

    /// The folder a write changes, if it changes one.
    fn folder_of(write: &Write) -> Option<(Address, FolderId)> {
        match write {
            Write::Message { address, .. } | Write::Tombstone { address, .. } => {
                Some((address.clone(), FolderId::INBOX))
            }
            Write::Folder {
                address, folder, ..
            } => Some((address.clone(), *folder)),
            Write::Account { .. }
            | Write::Outbound { .. }
            | Write::Folders { .. }
            | Write::Meta { .. } => None,
        }
    }
}

impl LocalReplica {
    pub fn new(store: Arc<Store>, bits: u32) -> LocalReplica {
        let committer = GroupCommitter::start(store.clone());
        LocalReplica {
            syncing: std::sync::atomic::AtomicBool::new(false),
            store,
            committer,
            bits,
            leases: LeaseTable::default(),
            watchers: FolderWatchers::default(),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn watchers(&self) -> &FolderWatchers {
        &self.watchers
    }

    pub fn set_syncing(&self, syncing: bool) {
        self.syncing
            .store(syncing, std::sync::atomic::Ordering::Release);
    }

    pub fn is_syncing(&self) -> bool {
        self.syncing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refuses a client read while this replica is catching up.
    pub fn check_serves_reads(&self) -> Result<(), MailError> {
        if self.is_syncing() {
            return Err(MailError::Unavailable(
                "this replica is still catching up".to_owned(),
            ));
        }
        Ok(())
    }

    pub fn key(&self, address: &Address) -> RingKey {
        key_of_address(address, self.bits)
    }

    /// The identifier space's width; keys are derived here, never taken from peers.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Applies `writes` in one group-committed transaction; durable when `Ok`.
    pub async fn apply(&self, writes: Vec<Write>) -> Result<(), MailError> {
        if writes.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let touched: Vec<(Address, FolderId)> = writes
            .iter()
            .filter_map(FolderWatchers::folder_of)
            .collect();
        self.committer.submit(writes, move |outcome| {
            let _ = sender.send(outcome);
        });
        let outcome = receiver.await;
        cm_types::metrics::REPLICA_LOCAL_WRITE_SECONDS.observe_duration(started.elapsed());
        match outcome {
            Ok(Ok(())) => {
                for (address, folder) in &touched {
                    self.watchers.changed(address, *folder);
                }
                Ok(())
            }
            Ok(Err(reason)) => Err(MailError::Storage(reason)),
            Err(_) => Err(MailError::Storage("the commit thread stopped".to_owned())),
        }
    }

    // Point reads run inline: a redb read transaction on a warm cache costs
    // microseconds, less than handing the work to the blocking pool and back
    // (measured: that hand-off was about 40 % of the CPU of a POP3 RETR).

    /// The stored account record, deleted ones included.
    pub async fn account(&self, address: &Address) -> Result<Option<Account>, MailError> {
        Ok(self.store.account(self.key(address), address)?)
    }

    pub async fn accounts(&self) -> Result<Vec<Account>, MailError> {
        let store = self.store.clone();
        Ok(blocking(move || store.accounts()).await??)
    }

    pub async fn mailbox(&self, address: &Address) -> Result<Mailbox, MailError> {
        Ok(self.store.mailbox(self.key(address), address)?)
    }

    pub async fn body(
        &self,
        address: &Address,
        id: MessageId,
    ) -> Result<Option<bytes::Bytes>, MailError> {
        Ok(self.store.body(self.key(address), address, id)?)
    }

    pub async fn folders(&self, address: &Address) -> Result<Folders, MailError> {
        Ok(self.store.folders(self.key(address), address)?)
    }

    pub async fn folder(
        &self,
        address: &Address,
        folder: FolderId,
    ) -> Result<FolderState, MailError> {
        Ok(self
            .store
            .folder_state(self.key(address), address, folder)?)
    }

    pub async fn folder_body(
        &self,
        address: &Address,
        folder: FolderId,
        id: MessageId,
    ) -> Result<Option<bytes::Bytes>, MailError> {
        Ok(self
            .store
            .folder_body(self.key(address), address, folder, id)?)
    }

    /// Every address held here with the digest of its state (see [`digest`]).
    pub async fn digests(&self) -> Result<Vec<(RingKey, Address, u64)>, MailError> {
        let store = self.store.clone();
        blocking(move || -> Result<Vec<(RingKey, Address, u64)>, MailError> {
            let mut result = Vec::new();
            for (key, address) in store.addresses()? {
                let account = store.account(key, &address)?;
                let mailbox = store.mailbox(key, &address)?;
                let imap = store.imap_fingerprint(key, &address)?;
                result.push((key, address, digest(account.as_ref(), &mailbox, imap)));
            }
            Ok(result)
        })
        .await?
    }

    /// The digest of one address as held here.
    pub async fn digest_of(&self, address: &Address) -> Result<u64, MailError> {
        let account = self.account(address).await?;
        let mailbox = self.mailbox(address).await?;
        let imap = self.store.imap_fingerprint(self.key(address), address)?;
        Ok(digest(account.as_ref(), &mailbox, imap))
    }
}

impl LocalReplica {
    /// The ring key of an outbound entry.
    pub fn outbound_key(&self, id: MessageId) -> RingKey {
        key_of_outbound(id.as_u128(), self.bits)
    }

    /// The digest of one outbound entry as held here; `None` if it is not.
    pub fn outbound_digest_of(&self, id: MessageId) -> Result<Option<u64>, MailError> {
        Ok(self
            .store
            .outbound(self.outbound_key(id), id)?
            .as_ref()
            .map(outbound_digest))
    }
}

/// A fingerprint of one outbound entry: its stored form (JSON of ordered maps and
/// sets, so equal entries encode equally). The body is left out: it never changes
/// and goes with the entry.
pub fn outbound_digest(entry: &Outbound) -> u64 {
    hash64(&serde_json::to_vec(entry).expect("entries serialise"))
}

/// A fingerprint of one address's replicated state: equal on two replicas exactly
/// when they hold the same account version, visible message ids and tombstones.
/// Received ids that have a tombstone are left out (the tombstone wins for ever, and
/// a replica that learns of a message only through its tombstone never gets its
/// index entry), and so are deletion times (they merge by maximum and change nothing
/// visible). `imap` is the fingerprint of the account's IMAP folders and their
/// states (`Store::imap_fingerprint`).
pub fn digest(account: Option<&Account>, mailbox: &Mailbox, imap: u64) -> u64 {
    let mut bytes =
        Vec::with_capacity(32 + 17 * (mailbox.received.len() + mailbox.tombstones.len()));
    if let Some(account) = account {
        bytes.extend_from_slice(&account.version.wall_ms.to_be_bytes());
        bytes.extend_from_slice(&account.version.counter.to_be_bytes());
        bytes.extend_from_slice(&account.version.node.to_be_bytes());
        bytes.push(u8::from(account.deleted));
    }
    bytes.push(b'r');
    for (id, _) in mailbox.visible() {
        bytes.extend_from_slice(&id.as_u128().to_be_bytes());
    }
    bytes.push(b't');
    for id in mailbox.tombstones.keys() {
        bytes.extend_from_slice(&id.as_u128().to_be_bytes());
    }
    bytes.push(b'i');
    bytes.extend_from_slice(&imap.to_be_bytes());
    hash64(&bytes)
}

pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, MailError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| MailError::Storage(format!("worker failed: {error}")))
}
