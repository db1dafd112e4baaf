//! Maildrop locks as leases (RFC 1939 §8: a POP3 session holds an exclusive lock).
//!
//! On a one-node ring the lease lives in this process and ends when its guard is
//! dropped (QUIT, a dropped connection, a timeout) or when the process dies. With
//! replication it moves to the mailbox's coordinator and gains an expiry that the
//! session renews, so that a crashed node cannot hold a maildrop for ever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cm_types::{Address, RingKey};

use crate::MailError;

/// The table of held leases: address -> lease id.
#[derive(Clone, Default)]
pub(crate) struct LeaseTable {
    held: Arc<Mutex<HashMap<Address, u64>>>,
    next_lease_id: Arc<AtomicU64>,
}

impl LeaseTable {
    pub(crate) fn acquire(&self, address: &Address, key: RingKey) -> Result<MaildropLock, MailError> {
        let mut held = self.held.lock().expect("lease mutex poisoned");
        if held.contains_key(address) {
            return Err(MailError::InUse);
        }
        let lease_id = self.next_lease_id.fetch_add(1, Ordering::Relaxed);
        held.insert(address.clone(), lease_id);
        Ok(MaildropLock { address: address.clone(), key, lease_id, table: self.clone() })
    }
}

/// Proof that a session holds the maildrop of one address. Dropping it releases
/// the lock.
pub struct MaildropLock {
    address: Address,
    key: RingKey,
    lease_id: u64,
    table: LeaseTable,
}

impl MaildropLock {
    pub fn address(&self) -> &Address {
        &self.address
    }

    pub fn key(&self) -> RingKey {
        self.key
    }

    /// Whether the lease is still ours (always, until leases can expire).
    pub fn is_held(&self) -> bool {
        let held = self.table.held.lock().expect("lease mutex poisoned");
        held.get(&self.address) == Some(&self.lease_id)
    }
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().expect("lease mutex poisoned");
        if held.get(&self.address) == Some(&self.lease_id) {
            held.remove(&self.address);
        }
    }
}

impl std::fmt::Debug for MaildropLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaildropLock").field("address", &self.address).field("lease_id", &self.lease_id).finish()
    }
}
