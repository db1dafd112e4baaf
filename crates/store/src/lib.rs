//! One node's durable local database: accounts, message bodies, mailbox indexes and
//! tombstones, in an embedded ACID store (redb) under `--data`.
//!
//! Every write goes through [`Store::apply`], one redb transaction committed with
//! fsync before it returns: nothing above this crate may acknowledge a write that
//! `apply` has not returned `Ok` for. [`GroupCommitter`] batches concurrent writers
//! into one transaction (group commit), so durability costs one fsync per batch,
//! not per message.
//!
//! Keys start with the ring key of the address, so that a range of the identifier
//! circle is a contiguous range of every table (for hand-off and anti-entropy).
//!
//! This crate knows nothing of SMTP, POP3, the ring or replication; it stores the
//! types of `cm-model` and merges them on write (accounts last-writer-wins,
//! mailboxes by union).

mod commit;

pub use commit::GroupCommitter;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use cm_model::{Account, Mailbox, MessageId, Outbound};
use cm_types::{Address, RingKey, hash64};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The on-disk schema this build reads and writes. Bump it with every change of a
/// table's layout, and teach [`Store::open`] to migrate from the older one.
pub const SCHEMA_VERSION: u64 = 1;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "chordmail.redb";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ACCOUNTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("accounts");
/// (ring key, address, message id) -> (size in octets, checksum of the body).
const INDEX: TableDefinition<(u64, &str, u128), (u64, u64)> = TableDefinition::new("index");
const BODIES: TableDefinition<(u64, &str, u128), &[u8]> = TableDefinition::new("bodies");
/// (ring key, address, message id) -> deletion time in milliseconds since the epoch.
const TOMBSTONES: TableDefinition<(u64, &str, u128), u64> = TableDefinition::new("tombstones");

/// (ring key, entry id) -> an outbound queue entry (`cm_model::Outbound`, JSON),
/// merged on every write. Added without a schema bump: older builds ignore it.
const OUTBOUND: TableDefinition<(u64, u128), &[u8]> = TableDefinition::new("outbound");
/// (ring key, entry id) -> the queued message's octets, until the entry is removed.
const OUTBOUND_BODIES: TableDefinition<(u64, u128), &[u8]> =
    TableDefinition::new("outbound_bodies");

const SCHEMA_VERSION_KEY: &str = "schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "store {path} has schema version {found}, this build reads up to {SCHEMA_VERSION}: upgrade chordmail"
    )]
    NewerSchema { path: PathBuf, found: u64 },
    #[error("store {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("storage failure: {0}")]
    Io(String),
}

impl From<redb::Error> for StoreError {
    fn from(error: redb::Error) -> StoreError {
        StoreError::Io(error.to_string())
    }
}

macro_rules! from_redb {
    ($($kind:ty),*) => {$(
        impl From<$kind> for StoreError {
            fn from(error: $kind) -> StoreError {
                StoreError::Io(error.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One change to the store. Writes are idempotent and merge with what is there, so
/// replaying one (a retry, a replica catching up) never does harm.
#[derive(Clone, Debug)]
pub enum Write {
    /// Last-writer-wins: kept only if newer than the stored version.
    Account { key: RingKey, account: Account },
    Message {
        key: RingKey,
        address: Address,
        id: MessageId,
        /// Shared, not copied, between the writes of every recipient and replica.
        body: Bytes,
    },
    Tombstone {
        key: RingKey,
        address: Address,
        id: MessageId,
        deleted_ms: u64,
    },
    /// An outbound queue entry, merged with the stored copy; `body` is stored once,
    /// with the entry's first write, and dropped when the entry is removed.
    Outbound {
        key: RingKey,
        entry: Box<Outbound>,
        body: Option<Bytes>,
    },
    /// A small named value of the node itself (its identity, remembered peers).
    Meta { name: String, value: Vec<u8> },
}

/// A handle on the database; cheap to share behind an `Arc`.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`. Refuses a store written by
    /// a newer schema and a file that is not a valid store, naming the path.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let db = Database::create(&path).map_err(|error| match error {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
                StoreError::Corrupt {
                    path: path.clone(),
                    reason,
                }
            }
            other => StoreError::Open {
                path: path.clone(),
                reason: other.to_string(),
            },
        })?;
        let store = Store { db, path };
        store.initialise_schema()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn initialise_schema(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get(SCHEMA_VERSION_KEY)?
                .map(|value| decode_u64(value.value()));
            match found {
                None => {
                    meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_be_bytes().as_slice())?;
                }
                Some(Some(version)) if version > SCHEMA_VERSION => {
                    return Err(StoreError::NewerSchema {
                        path: self.path.clone(),
                        found: version,
                    });
                }
                Some(Some(_)) => {}
                Some(None) => {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        reason: "schema version is not an 8-byte integer".to_owned(),
                    });
                }
            }
            txn.open_table(ACCOUNTS)?;
            txn.open_table(INDEX)?;
            txn.open_table(BODIES)?;
            txn.open_table(TOMBSTONES)?;
            txn.open_table(OUTBOUND)?;
            txn.open_table(OUTBOUND_BODIES)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Applies every write in one transaction and fsyncs before returning.
    pub fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut accounts = txn.open_table(ACCOUNTS)?;
            let mut index = txn.open_table(INDEX)?;
            let mut bodies = txn.open_table(BODIES)?;
            let mut tombstones = txn.open_table(TOMBSTONES)?;
            let mut meta = txn.open_table(META)?;
            let mut outbound = txn.open_table(OUTBOUND)?;
            let mut outbound_bodies = txn.open_table(OUTBOUND_BODIES)?;
            for write in writes {
                match write {
                    Write::Account { key, account } => {
                        let row = (*key, account.address.as_str());
                        let stored = accounts
                            .get(row)?
                            .map(|value| decode_account(value.value()))
                            .transpose();
                        let merged = match stored.map_err(|reason| self.corrupt(reason))? {
                            Some(existing) => existing.merge(account.clone()),
                            None => account.clone(),
                        };
                        let encoded = serde_json::to_vec(&merged).expect("accounts serialise");
                        accounts.insert(row, encoded.as_slice())?;
                    }
                    Write::Message {
                        key,
                        address,
                        id,
                        body,
                    } => {
                        let row = (*key, address.as_str(), id.as_u128());
                        if index.get(row)?.is_some() {
                            continue;
                        }
                        index.insert(row, (body.len() as u64, hash64(body)))?;
                        if tombstones.get(row)?.is_none() {
                            bodies.insert(row, body.as_ref())?;
                        }
                    }
                    Write::Tombstone {
                        key,
                        address,
                        id,
                        deleted_ms,
                    } => {
                        let row = (*key, address.as_str(), id.as_u128());
                        let previous = tombstones.get(row)?.map(|value| value.value()).unwrap_or(0);
                        tombstones.insert(row, previous.max(*deleted_ms))?;
                        bodies.remove(row)?;
                    }
                    Write::Outbound { key, entry, body } => {
                        let row = (*key, entry.id.as_u128());
                        let stored = outbound
                            .get(row)?
                            .map(|value| decode_outbound(value.value()))
                            .transpose()
                            .map_err(|reason| self.corrupt(reason))?;
                        let merged = match stored {
                            Some(mut existing) => {
                                existing.merge(entry);
                                existing
                            }
                            None => (**entry).clone(),
                        };
                        let encoded = serde_json::to_vec(&merged).expect("entries serialise");
                        outbound.insert(row, encoded.as_slice())?;
                        if merged.removed_ms.is_some() {
                            outbound_bodies.remove(row)?;
                        } else if let Some(body) = body
                            && outbound_bodies.get(row)?.is_none()
                        {
                            outbound_bodies.insert(row, body.as_ref())?;
                        }
                    }
                    Write::Meta { name, value } => {
                        assert_ne!(
                            name, SCHEMA_VERSION_KEY,
                            "the schema version is not a node setting"
                        );
                        meta.insert(name.as_str(), value.as_slice())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(name)?.map(|value| value.value().to_vec()))
    }

    pub fn account(&self, key: RingKey, address: &Address) -> Result<Option<Account>, StoreError> {
        let txn = self.db.begin_read()?;
        let accounts = txn.open_table(ACCOUNTS)?;
        let Some(value) = accounts.get((key, address.as_str()))? else {
            return Ok(None);
        };
        decode_account(value.value())
            .map(Some)
            .map_err(|reason| self.corrupt(reason))
    }

    /// Every account record held here, deleted ones included, in key order.
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let txn = self.db.begin_read()?;
        let accounts = txn.open_table(ACCOUNTS)?;
        let mut result = Vec::new();
        for row in accounts.iter()? {
            let (_, value) = row?;
            result.push(decode_account(value.value()).map_err(|reason| self.corrupt(reason))?);
        }
        Ok(result)
    }

    /// This replica's view of one mailbox.
    pub fn mailbox(&self, key: RingKey, address: &Address) -> Result<Mailbox, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(INDEX)?;
        let tombstones = txn.open_table(TOMBSTONES)?;
        let range = (key, address.as_str(), 0u128)..=(key, address.as_str(), u128::MAX);
        let mut mailbox = Mailbox::default();
        for row in index.range(range.clone())? {
            let (row_key, value) = row?;
            mailbox
                .received
                .insert(MessageId::from_u128(row_key.value().2), value.value().0);
        }
        for row in tombstones.range(range)? {
            let (row_key, value) = row?;
            mailbox
                .tombstones
                .insert(MessageId::from_u128(row_key.value().2), value.value());
        }
        Ok(mailbox)
    }

    /// The body of a message, checked against the checksum recorded when it was
    /// written. `None` if it was never received here or has been deleted.
    pub fn body(
        &self,
        key: RingKey,
        address: &Address,
        id: MessageId,
    ) -> Result<Option<Bytes>, StoreError> {
        let txn = self.db.begin_read()?;
        let row = (key, address.as_str(), id.as_u128());
        let Some(body) = txn
            .open_table(BODIES)?
            .get(row)?
            .map(|value| value.value().to_vec())
        else {
            return Ok(None);
        };
        let index = txn.open_table(INDEX)?;
        let (size, checksum) = index
            .get(row)?
            .map(|value| value.value())
            .ok_or_else(|| self.corrupt(format!("message {id} has a body but no index entry")))?;
        if size != body.len() as u64 || checksum != hash64(&body) {
            return Err(self.corrupt(format!("message {id} of {address} fails its checksum")));
        }
        Ok(Some(Bytes::from(body)))
    }

    /// Removes tombstones deleted before `cutoff_ms`, with the index entries and
    /// bodies they cover, at most `n_max` per call (one transaction, fsynced).
    /// Returns how many were removed. A replica that stayed away longer than the
    /// caller's grace period could bring such a message back: the grace period must
    /// exceed any outage a replica is expected to come back from.
    pub fn collect_tombstones(&self, cutoff_ms: u64, n_max: usize) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let n_removed;
        {
            let mut tombstones = txn.open_table(TOMBSTONES)?;
            let mut index = txn.open_table(INDEX)?;
            let mut bodies = txn.open_table(BODIES)?;
            let mut expired: Vec<(u64, String, u128)> = Vec::new();
            for row in tombstones.iter()? {
                let (row_key, deleted_ms) = row?;
                if deleted_ms.value() < cutoff_ms {
                    let (key, address, id) = row_key.value();
                    expired.push((key, address.to_owned(), id));
                    if expired.len() == n_max {
                        break;
                    }
                }
            }
            for (key, address, id) in &expired {
                let row = (*key, address.as_str(), *id);
                tombstones.remove(row)?;
                index.remove(row)?;
                bodies.remove(row)?;
            }
            n_removed = expired.len();
        }
        txn.commit()?;
        Ok(n_removed)
    }

    /// One outbound queue entry as held here.
    pub fn outbound(&self, key: RingKey, id: MessageId) -> Result<Option<Outbound>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOUND)?;
        let Some(value) = table.get((key, id.as_u128()))? else {
            return Ok(None);
        };
        decode_outbound(value.value())
            .map(Some)
            .map_err(|reason| self.corrupt(reason))
    }

    /// The octets of a queued message, while its entry is not removed.
    pub fn outbound_body(&self, key: RingKey, id: MessageId) -> Result<Option<Bytes>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOUND_BODIES)?;
        Ok(table
            .get((key, id.as_u128()))?
            .map(|value| Bytes::copy_from_slice(value.value())))
    }

    /// Outbound entries held here (removed ones included), in key order, at most
    /// `n_max`.
    pub fn outbound_entries(&self, n_max: usize) -> Result<Vec<(RingKey, Outbound)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOUND)?;
        let mut entries = Vec::new();
        for row in table.iter()?.take(n_max) {
            let (row_key, value) = row?;
            let entry = decode_outbound(value.value()).map_err(|reason| self.corrupt(reason))?;
            entries.push((row_key.value().0, entry));
        }
        Ok(entries)
    }

    /// Removes outbound entries removed before `cutoff_ms`, at most `n_max` (one
    /// transaction, fsynced); the same grace rule as [`Store::collect_tombstones`].
    pub fn collect_outbound(&self, cutoff_ms: u64, n_max: usize) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let n_removed;
        {
            let mut table = txn.open_table(OUTBOUND)?;
            let mut expired = Vec::new();
            for row in table.iter()? {
                let (row_key, value) = row?;
                let entry =
                    decode_outbound(value.value()).map_err(|reason| self.corrupt(reason))?;
                if entry
                    .removed_ms
                    .is_some_and(|removed_ms| removed_ms < cutoff_ms)
                {
                    expired.push(row_key.value());
                    if expired.len() == n_max {
                        break;
                    }
                }
            }
            for row in &expired {
                table.remove(*row)?;
            }
            n_removed = expired.len();
        }
        txn.commit()?;
        Ok(n_removed)
    }

    /// The number of distinct addresses (ring keys) with data here.
    pub fn n_keys(&self) -> Result<u64, StoreError> {
        Ok(self.addresses()?.len() as u64)
    }

    /// Every address with data here (account, messages or tombstones), in key order.
    pub fn addresses(&self) -> Result<Vec<(RingKey, Address)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut found = std::collections::BTreeSet::new();
        for row in txn.open_table(ACCOUNTS)?.iter()? {
            let (row_key, _) = row?;
            let (key, address) = row_key.value();
            found.insert((key, address.to_owned()));
        }
        for row in txn.open_table(INDEX)?.iter()? {
            let (row_key, _) = row?;
            let (key, address, _) = row_key.value();
            found.insert((key, address.to_owned()));
        }
        for row in txn.open_table(TOMBSTONES)?.iter()? {
            let (row_key, _) = row?;
            let (key, address, _) = row_key.value();
            found.insert((key, address.to_owned()));
        }
        found
            .into_iter()
            .map(|(key, address)| {
                Address::parse(&address)
                    .map(|address| (key, address))
                    .map_err(|error| {
                        self.corrupt(format!("stored address {address:?} is invalid: {error}"))
                    })
            })
            .collect()
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn decode_account(bytes: &[u8]) -> Result<Account, String> {
    serde_json::from_slice(bytes).map_err(|error| format!("unreadable account record: {error}"))
}

fn decode_outbound(bytes: &[u8]) -> Result<Outbound, String> {
    serde_json::from_slice(bytes).map_err(|error| format!("unreadable outbound entry: {error}"))
}

#[cfg(test)]
mod tests;
