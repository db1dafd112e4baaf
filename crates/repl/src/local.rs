//! This node's replica of every key it holds: the store, its group committer and
//! the maildrop leases of the mailboxes this node coordinates.

use std::sync::Arc;

use cm_model::{Account, Mailbox, MessageId, Outbound};
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
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
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
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.committer.submit(writes, move |outcome| {
            let _ = sender.send(outcome);
        });
        match receiver.await {
            Ok(Ok(())) => Ok(()),
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

    /// Every address held here with the digest of its state (see [`digest`]).
    pub async fn digests(&self) -> Result<Vec<(RingKey, Address, u64)>, MailError> {
        let store = self.store.clone();
        blocking(move || -> Result<Vec<(RingKey, Address, u64)>, MailError> {
            let mut result = Vec::new();
            for (key, address) in store.addresses()? {
                let account = store.account(key, &address)?;
                let mailbox = store.mailbox(key, &address)?;
                result.push((key, address, digest(account.as_ref(), &mailbox)));
            }
            Ok(result)
        })
        .await?
    }

    /// The digest of one address as held here.
    pub async fn digest_of(&self, address: &Address) -> Result<u64, MailError> {
        let account = self.account(address).await?;
        let mailbox = self.mailbox(address).await?;
        Ok(digest(account.as_ref(), &mailbox))
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
/// visible).
pub fn digest(account: Option<&Account>, mailbox: &Mailbox) -> u64 {
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
    hash64(&bytes)
}

pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, MailError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| MailError::Storage(format!("worker failed: {error}")))
}
