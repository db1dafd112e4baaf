//! IMAP's data through the replica sets (docs/DESIGN.md §11): an account's folders, and
//! per folder its messages, flags and UID map, all under the account's ring key.
//!
//! - Reads merge every member that answers (a read quorum at least) and copy what
//!   a member lacks of flags, UIDs and tombstones to it at once (read repair).
//! - Writes are deltas (`cm_store::Write::Folder`, `Write::Folders`) written to a
//!   write quorum; replicas merge them. INBOX's messages are the POP3 maildrop's:
//!   APPEND and COPY into INBOX write maildrop messages, and EXPUNGE in any folder
//!   goes the way of POP3's deletions ([`Mail::delete`]'s rules), so an expunge in
//!   INBOX is the very tombstone POP3 writes.
//! - UIDs are given by [`Mail::numbered_folder`]: under a short majority lease on
//!   the folder's UID map (`LeaseScope::UidMap`), it reads the folder with `R`,
//!   numbers the visible messages that have no UID, writes the claims with `W` and
//!   only then returns them. A refused write numbers nothing. Claims that a
//!   partition let two sides make are resolved by `cm_model::UidMap::resolve`.
//!
//! Refusals by the folder rules (no such folder, a name taken, a limit) are a
//! [`Refusal`] inside `Ok`, so that callers tell them from replication failures
//! ([`MailError`]) in the type.

use std::time::Duration;

use bytes::Bytes;
use cm_model::{
    FlagName, FolderError, FolderId, FolderState, FolderView, Folders, MessageId, UidMap,
};
use cm_ring::NodeRef;
use cm_store::Write;
use cm_types::Address;

use crate::lease::{LeaseScope, SharedHolders, release_everywhere};
use crate::replica::ReadFor;
use crate::{Mail, MailError, now_ms};

/// How long a replica tells a node of writes to a folder after its last
/// subscription (IDLE across the ring): a node that stopped idling, or crashed,
/// costs a few notifications at most this long.
pub const SUBSCRIPTION_TTL: Duration = Duration::from_secs(15);
/// How often an idling node renews its subscriptions, on the current replica set.
pub const SUBSCRIPTION_RENEW_PERIOD: Duration = Duration::from_secs(5);

const _: () = assert!(SUBSCRIPTION_RENEW_PERIOD.as_millis() * 2 < SUBSCRIPTION_TTL.as_millis());

/// How long a UID map's lease lives: numbering is one read and one write, so a
/// holder that crashed blocks numbering of that folder this long at most.
pub const UID_LEASE_TTL: Duration = Duration::from_secs(2);
/// How long a session waits for another session's numbering of the same folder.
pub const UID_LEASE_WAIT_MAX: Duration = Duration::from_secs(4);
/// Pause between two tries for a UID map's lease held by another session.
const UID_LEASE_RETRY_PAUSE: Duration = Duration::from_millis(15);
/// Messages one COPY, MOVE, STORE or EXPUNGE names at most (the shell splits
/// larger requests or the client gets `NO [LIMIT]`).
pub const IMAP_MESSAGES_PER_WRITE_MAX: usize = 10_000;

const _: () = assert!(UID_LEASE_WAIT_MAX.as_millis() > UID_LEASE_TTL.as_millis());

/// Why the folder rules refused an IMAP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoSuchFolder,
    Exists,
    /// Not allowed: INBOX deleted or renamed, an invalid name or flag.
    Cannot,
    /// Too many folders, flags or messages, or a folder over its size limit.
    Limit,
}

impl From<FolderError> for Refusal {
    fn from(error: FolderError) -> Refusal {
        match error {
            FolderError::NotFound => Refusal::NoSuchFolder,
            FolderError::Exists => Refusal::Exists,
            FolderError::InvalidName | FolderError::Inbox => Refusal::Cannot,
            FolderError::TooMany => Refusal::Limit,
        }
    }
}

/// One message's flag changes: (message, flags to set, flags to clear).
pub type FlagChange = (MessageId, Vec<FlagName>, Vec<FlagName>);

/// The wake-ups of one folder for one IDLE session: from this node's replica, and,
/// when this node is outside the folder's replica set, from the members it
/// subscribed with (renewed while the watch lives).
pub struct FolderWatch {
    changes: tokio::sync::watch::Receiver<u64>,
    renewal: tokio::task::JoinHandle<()>,
}

impl FolderWatch {
    /// Returns once the folder changed since the last call (or since the watch
    /// began); never returns if the registry is gone.
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// The lease on one folder's UID map, released (everywhere it was granted) when
/// dropped.
struct UidLease {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl Mail {
    /// IDLE's wake-ups for `folder` of `address`: every write to it applied to this
    /// node's replica, and, when this node is not in the replica set, every write
    /// applied to a member it subscribed with. A notification lost on the way is
    /// made up for by the session's fallback poll.
    pub fn watch_folder(&self, address: &Address, folder: FolderId) -> FolderWatch {
        let changes = self.inner.local.watchers().watch(address, folder);
        let (mail, address) = (self.clone(), address.clone());
        let renewal = tokio::spawn(async move {
            loop {
                mail.subscribe_round(&address, folder).await;
                tokio::time::sleep(SUBSCRIPTION_RENEW_PERIOD).await;
            }
        });
        FolderWatch { changes, renewal }
    }

    /// Subscribes this node with every member of the folder's replica set, unless
    /// it is one (then its own replica wakes it).
    async fn subscribe_round(&self, address: &Address, folder: FolderId) {
        let Ok(set) = self.replica_set(self.key(address)).await else {
            return;
        };
        if set.iter().any(|node| self.is_me(node)) {
            return;
        }
        let me = self.me();
        for node in set {
            let (member, address, me) = (self.member(&node), address.clone(), me.clone());
            tokio::spawn(async move {
                if let Err(error) = member.subscribe(&address, folder, &me).await {
                    tracing::debug!(member = %node.addr, %error, "idle subscription failed");
                }
            });
        }
    }

    /// Tells `nodes` that `folder` of `address` changed here (fire and forget).
    pub(crate) fn notify_subscribers(
        &self,
        nodes: Vec<NodeRef>,
        address: Address,
        folder: FolderId,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for node in nodes.into_iter().filter(|node| !self.is_me(node)) {
            let (member, address) = (self.member(&node), address.clone());
            runtime.spawn(async move {
                if let Err(error) = member.notify(&address, folder).await {
                    tracing::debug!(subscriber = %node.addr, %error, "idle notification failed");
                }
            });
        }
    }

    /// The account's folder records, merged from every member that answers (`R`
    /// at least); members that lack records get the merge (read repair).
    pub async fn folders(&self, address: &Address) -> Result<Folders, MailError> {
        let key = self.key(address);
        let answers = self
            .read_every_member(address, "read folders", |member, address| async move {
                member.folders(&address, ReadFor::Client).await
            })
            .await?;
        let mut merged = Folders::default();
        for (_, answer) in &answers {
            merged.merge(answer);
        }
        for (node, answer) in answers {
            if answer != merged {
                let write = Write::Folders {
                    key,
                    address: address.clone(),
                    folders: Box::new(merged.clone()),
                };
                self.repair(node, vec![write]);
            }
        }
        Ok(merged)
    }

    /// The live folder called `name`; INBOX needs no read.
    pub async fn folder_named(
        &self,
        address: &Address,
        name: &str,
    ) -> Result<Option<FolderView>, MailError> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Ok(Folders::default().find(name));
        }
        Ok(self.folders(address).await?.find(name))
    }

    pub async fn create_folder(
        &self,
        address: &Address,
        name: &str,
    ) -> Result<Result<(), Refusal>, MailError> {
        let id = FolderId(rand::random::<u128>().max(1));
        self.change_folders(address, |folders, version| {
            folders.create(name, id, version)
        })
        .await
    }

    pub async fn delete_folder(
        &self,
        address: &Address,
        name: &str,
    ) -> Result<Result<(), Refusal>, MailError> {
        self.change_folders(address, |folders, version| folders.delete(name, version))
            .await
    }

    pub async fn rename_folder(
        &self,
        address: &Address,
        from: &str,
        to: &str,
    ) -> Result<Result<(), Refusal>, MailError> {
        self.change_folders(address, |folders, version| {
            folders.rename(from, to, version)
        })
        .await
    }

    pub async fn subscribe_folder(
        &self,
        address: &Address,
        name: &str,
        subscribed: bool,
    ) -> Result<Result<(), Refusal>, MailError> {
        self.change_folders(address, |folders, version| {
            folders.subscribe(name, subscribed, version)
        })
        .await
    }

    /// Reads the folder records with `R`, asks `change` for a delta and writes it
    /// with `W`.
    async fn change_folders(
        &self,
        address: &Address,
        change: impl FnOnce(&Folders, cm_model::Version) -> Result<Folders, FolderError>,
    ) -> Result<Result<(), Refusal>, MailError> {
        let folders = self.folders(address).await?;
        let delta = match change(&folders, self.next_version()) {
            Ok(delta) => delta,
            Err(error) => return Ok(Err(error.into())),
        };
        let key = self.key(address);
        let write = Write::Folders {
            key,
            address: address.clone(),
            folders: Box::new(delta),
        };
        self.write_quorum(key, vec![write]).await?;
        Ok(Ok(()))
    }

    /// One folder's state merged from every member that answers (`R` at least);
    /// members lacking flags, UIDs or tombstones get them (read repair). Messages
    /// a member lacks are left to anti-entropy, which carries their octets.
    pub async fn read_folder(
        &self,
        address: &Address,
        folder: FolderId,
    ) -> Result<FolderState, MailError> {
        let answers = self
            .read_every_member(address, "read folder", move |member, address| async move {
                member.folder(&address, folder, ReadFor::Client).await
            })
            .await?;
        let mut merged = FolderState::default();
        for (_, answer) in &answers {
            merged.merge(answer);
        }
        for (node, answer) in answers {
            let writes = self.repairs_for(address, folder, &answer, &merged);
            if !writes.is_empty() {
                self.repair(node, writes);
            }
        }
        Ok(merged)
    }

    /// The writes that give a member holding `theirs` what `merged` has more of
    /// in flags, UIDs and tombstones.
    fn repairs_for(
        &self,
        address: &Address,
        folder: FolderId,
        theirs: &FolderState,
        merged: &FolderState,
    ) -> Vec<Write> {
        let key = self.key(address);
        let mut writes = Vec::new();
        let mut delta = FolderState::default();
        if theirs.flags != merged.flags {
            delta.flags = merged.flags.clone();
        }
        if theirs.uids != merged.uids {
            delta.uids = merged.uids.clone();
        }
        let missing_tombstones = merged
            .mailbox
            .tombstones
            .iter()
            .filter(|(id, _)| !theirs.mailbox.tombstones.contains_key(id));
        if folder == FolderId::INBOX {
            for (id, deleted_ms) in missing_tombstones {
                writes.push(Write::Tombstone {
                    key,
                    address: address.clone(),
                    id: *id,
                    deleted_ms: *deleted_ms,
                });
            }
        } else {
            delta.mailbox.tombstones = missing_tombstones
                .map(|(id, deleted_ms)| (*id, *deleted_ms))
                .collect();
        }
        if !delta.is_empty() {
            writes.push(Write::Folder {
                key,
                address: address.clone(),
                folder,
                delta: Box::new(delta),
                bodies: Vec::new(),
            });
        }
        writes
    }

    /// The folder's state with every visible message numbered: when some have no
    /// UID, under the UID map's lease, it reads the folder again, writes the new
    /// claims to a write quorum and merges them. `Err` when the lease or the write
    /// failed: nothing new is numbered then (claims that reached a minority are
    /// resolved by the conflict rule if they ever clash).
    pub async fn numbered_folder(
        &self,
        address: &Address,
        folder: FolderId,
    ) -> Result<FolderState, MailError> {
        let state = self.read_folder(address, folder).await?;
        if state.claims_to_write().map_err(uids_exhausted)?.is_empty() {
            return Ok(state);
        }
        let _lease = self.uid_lease(address, folder).await?;
        let mut state = self.read_folder(address, folder).await?;
        let claims = state.claims_to_write().map_err(uids_exhausted)?;
        if claims.is_empty() {
            return Ok(state);
        }
        let key = self.key(address);
        let delta = FolderState {
            uids: UidMap {
                claims: claims.iter().copied().collect(),
            },
            ..FolderState::default()
        };
        let write = Write::Folder {
            key,
            address: address.clone(),
            folder,
            delta: Box::new(delta),
            bodies: Vec::new(),
        };
        self.write_quorum(key, vec![write]).await?;
        state.uids.claims.extend(claims);
        Ok(state)
    }

    /// Takes the lease on the UID map of `folder`, waiting for another session's
    /// numbering for [`UID_LEASE_WAIT_MAX`] at most.
    async fn uid_lease(&self, address: &Address, folder: FolderId) -> Result<UidLease, MailError> {
        let key = self.key(address);
        let scope = LeaseScope::UidMap(folder);
        let deadline = tokio::time::Instant::now() + UID_LEASE_WAIT_MAX;
        loop {
            let lease_id: u64 = rand::random();
            let holders: SharedHolders = Default::default();
            let set = self.replica_set(key).await?;
            let granted = self
                .lease_round(set, address, scope, lease_id, &holders)
                .await;
            let release =
                release_everywhere(self.clone(), address.clone(), scope, lease_id, holders);
            match granted {
                Ok(()) => {
                    return Ok(UidLease {
                        release: Some(Box::new(release)),
                    });
                }
                Err(MailError::InUse) if tokio::time::Instant::now() < deadline => {
                    release();
                    // Jitter: two sessions that each got part of the grants must
                    // not retry in step for ever.
                    let jitter = rand::random_range(0..=UID_LEASE_RETRY_PAUSE.as_millis() as u64);
                    tokio::time::sleep(UID_LEASE_RETRY_PAUSE + Duration::from_millis(jitter)).await;
                }
                Err(MailError::InUse) => {
                    release();
                    return Err(MailError::Unavailable(
                        "another session kept numbering this folder".to_owned(),
                    ));
                }
                Err(error) => {
                    release();
                    return Err(error);
                }
            }
        }
    }

    /// Stores `message` in `folder` with `flags`, as arrived at `arrival_ms` (its
    /// INTERNALDATE), and numbers it. Returns its UID.
    pub async fn append(
        &self,
        address: &Address,
        folder: FolderId,
        flags: &[FlagName],
        arrival_ms: u64,
        message: Bytes,
    ) -> Result<Result<u32, Refusal>, MailError> {
        let id = MessageId::generate(arrival_ms);
        let mut writes = Vec::new();
        if let Err(refusal) = self.add_message(address, folder, id, flags, message, &mut writes) {
            return Ok(Err(refusal));
        }
        self.write_quorum(self.key(address), writes).await?;
        let state = self.numbered_folder(address, folder).await?;
        let uid = state.uids.resolve().uid_of.get(&id).copied();
        uid.map(Ok).ok_or_else(|| {
            MailError::Unavailable("the appended message was not numbered".to_owned())
        })
    }

    /// The writes that put message `id` into `folder` with `flags`: a maildrop
    /// message for INBOX, a folder message otherwise.
    fn add_message(
        &self,
        address: &Address,
        folder: FolderId,
        id: MessageId,
        flags: &[FlagName],
        message: Bytes,
        writes: &mut Vec<Write>,
    ) -> Result<(), Refusal> {
        let key = self.key(address);
        let mut delta = FolderState::default();
        if !flags.is_empty() {
            delta.flags = delta
                .flags
                .write(id, flags, true, self.next_version())
                .map_err(|_| Refusal::Limit)?;
        }
        if folder == FolderId::INBOX {
            writes.push(Write::Message {
                key,
                address: address.clone(),
                id,
                body: message,
            });
            if delta.is_empty() {
                return Ok(());
            }
            writes.push(Write::Folder {
                key,
                address: address.clone(),
                folder,
                delta: Box::new(delta),
                bodies: Vec::new(),
            });
        } else {
            delta.mailbox.received.insert(id, message.len() as u64);
            writes.push(Write::Folder {
                key,
                address: address.clone(),
                folder,
                delta: Box::new(delta),
                bodies: vec![(id, message)],
            });
        }
        Ok(())
    }

    /// The octets of `ids` in `folder`, `None` for a message no replica has (any
    /// longer). This node's copy is read first: bodies never change.
    pub async fn folder_bodies(
        &self,
        address: &Address,
        folder: FolderId,
        ids: &[MessageId],
    ) -> Result<Vec<Option<Bytes>>, MailError> {
        let mut bodies = Vec::with_capacity(ids.len());
        let mut others: Option<Vec<NodeRef>> = None;
        for id in ids {
            if let Some(body) = self.inner.local.folder_body(address, folder, *id).await? {
                bodies.push(Some(body));
                continue;
            }
            if others.is_none() {
                let set = self.replica_set(self.key(address)).await?;
                others = Some(set.into_iter().filter(|node| !self.is_me(node)).collect());
            }
            let mut found = None;
            let mut last_error = None;
            for node in others.as_deref().unwrap_or_default() {
                match self.member(node).folder_body(address, folder, *id).await {
                    Ok(Some(body)) => {
                        found = Some(body);
                        break;
                    }
                    Ok(None) => {}
                    Err(error) => last_error = Some(error),
                }
            }
            match (found, last_error) {
                (Some(body), _) => bodies.push(Some(body)),
                (None, Some(error)) => return Err(error),
                (None, None) => bodies.push(None),
            }
        }
        Ok(bodies)
    }

    /// Sets and clears flags of messages of `folder` (last writer wins per message
    /// and flag).
    pub async fn store_flags(
        &self,
        address: &Address,
        folder: FolderId,
        changes: &[FlagChange],
    ) -> Result<Result<(), Refusal>, MailError> {
        if changes.len() > IMAP_MESSAGES_PER_WRITE_MAX {
            return Ok(Err(Refusal::Limit));
        }
        // The per-message flag limit is checked against this node's copy when it
        // has one; the folder's size limit bounds the rest.
        let current = self.inner.local.folder(address, folder).await?;
        let version = self.next_version();
        let mut delta = FolderState::default();
        for (id, add, remove) in changes {
            for (flags, value) in [(add, true), (remove, false)] {
                if flags.is_empty() {
                    continue;
                }
                match current.flags.write(*id, flags, value, version) {
                    Ok(written) => delta.flags.merge(&written),
                    Err(_) => return Ok(Err(Refusal::Limit)),
                }
            }
        }
        if delta.is_empty() {
            return Ok(Ok(()));
        }
        let key = self.key(address);
        let write = Write::Folder {
            key,
            address: address.clone(),
            folder,
            delta: Box::new(delta),
            bodies: Vec::new(),
        };
        self.write_quorum(key, vec![write]).await?;
        Ok(Ok(()))
    }

    /// Removes messages from `folder` for good: tombstones written by the rules of
    /// POP3's deletions, so that an EXPUNGE in INBOX and a POP3 DELE are one thing.
    pub async fn expunge(
        &self,
        address: &Address,
        folder: FolderId,
        ids: &[MessageId],
    ) -> Result<(), MailError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.key(address);
        let deleted_ms = now_ms();
        let writes = if folder == FolderId::INBOX {
            ids.iter()
                .map(|id| Write::Tombstone {
                    key,
                    address: address.clone(),
                    id: *id,
                    deleted_ms,
                })
                .collect()
        } else {
            let mut delta = FolderState::default();
            delta.mailbox.tombstones = ids.iter().map(|id| (*id, deleted_ms)).collect();
            vec![Write::Folder {
                key,
                address: address.clone(),
                folder,
                delta: Box::new(delta),
                bodies: Vec::new(),
            }]
        };
        self.write_deletion_writes(key, address, writes).await
    }

    /// Copies messages of `from` into `to` under new ids (same INTERNALDATE and
    /// flags), then with `remove_source` expunges them from `from` (MOVE). Returns
    /// the new UIDs, in the order of `ids`; messages gone meanwhile are skipped.
    pub async fn copy_messages(
        &self,
        address: &Address,
        from: FolderId,
        to: FolderId,
        ids: &[MessageId],
        remove_source: bool,
    ) -> Result<Result<Vec<(MessageId, u32)>, Refusal>, MailError> {
        if ids.len() > IMAP_MESSAGES_PER_WRITE_MAX {
            return Ok(Err(Refusal::Limit));
        }
        let source = self.read_folder(address, from).await?;
        let mut copies: Vec<(MessageId, MessageId)> = Vec::with_capacity(ids.len());
        let mut writes = Vec::new();
        // Bodies are read and written a few at a time, so that a large COPY holds
        // a bounded number of them at once.
        for chunk in ids.chunks(COPY_BATCH_MESSAGES) {
            let bodies = self.folder_bodies(address, from, chunk).await?;
            for (id, body) in chunk.iter().zip(bodies) {
                let Some(body) = body else { continue };
                if !source.mailbox.is_visible(*id) {
                    continue;
                }
                let copy = MessageId::generate(id.arrival_ms());
                let flags: Vec<FlagName> = source.flags.of(*id).cloned().collect();
                if let Err(refusal) = self.add_message(address, to, copy, &flags, body, &mut writes)
                {
                    return Ok(Err(refusal));
                }
                copies.push((*id, copy));
            }
            self.write_quorum(self.key(address), std::mem::take(&mut writes))
                .await?;
        }
        let state = self.numbered_folder(address, to).await?;
        let resolved = state.uids.resolve();
        let mut uids = Vec::with_capacity(copies.len());
        for (original, copy) in &copies {
            let uid = resolved.uid_of.get(copy).copied().ok_or_else(|| {
                MailError::Unavailable("a copied message was not numbered".to_owned())
            })?;
            uids.push((*original, uid));
        }
        if remove_source {
            let originals: Vec<MessageId> = copies.iter().map(|(original, _)| *original).collect();
            self.expunge(address, from, &originals).await?;
        }
        Ok(Ok(uids))
    }

    /// This node's own copy of one folder, for tests and operators.
    pub async fn local_folder(
        &self,
        address: &Address,
        folder: FolderId,
    ) -> Result<FolderState, MailError> {
        self.inner.local.folder(address, folder).await
    }
}

/// Messages whose octets one COPY batch holds at once.
const COPY_BATCH_MESSAGES: usize = 32;

fn uids_exhausted(error: cm_model::UidError) -> MailError {
    MailError::Invalid(error.to_string())
}
