//! Maildrop locks as leases (RFC 1939 §8: a POP3 session holds an exclusive lock).
//!
//! The lease of a mailbox is granted by the members of its replica set, each in its
//! [`LeaseTable`] with an expiry; a session holds it when every member that answered
//! and at least a majority granted it (`Mail::lock_maildrop`). The session's node
//! renews it on the current replica set while the session lives ([`MaildropLock`]
//! runs the renewal) and releases it when the guard drops (QUIT, a dropped
//! connection, a timeout). If the session's node crashes the lease expires; if a
//! renewal cannot reach a majority, the lease is lost and the session can no longer
//! commit deletions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cm_model::FolderId;
use cm_ring::NodeRef;
use cm_types::{Address, RingKey};

use crate::quorum::Fanout;
use crate::{Mail, MailError};

/// How long a lease lives without renewal; bounds how long a crashed session's
/// node keeps a mailbox locked (docs/DESIGN.md §9.3 asks for 10 s at most).
pub const LEASE_TTL: Duration = Duration::from_secs(8);
/// Renewal period: three tries before the lease would expire.
pub const LEASE_RENEW_PERIOD: Duration = Duration::from_millis(2500);
/// Leases a coordinator holds at most (one per open POP3 session in the cluster).
const LEASES_MAX: usize = 65_536;

const _: () = assert!(LEASE_RENEW_PERIOD.as_millis() * 3 <= LEASE_TTL.as_millis());

/// What a lease of an address covers. Each scope is a lock of its own: a POP3
/// session's maildrop lease never keeps an IMAP session from numbering, nor the
/// other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseScope {
    /// The POP3 maildrop (RFC 1939 §8), held for a whole session.
    Maildrop,
    /// One IMAP folder's UID map, held while one session numbers new messages
    /// (docs/DESIGN.md §11), for [`crate::imap::UID_LEASE_TTL`] at most.
    UidMap(FolderId),
}

/// The leases this node grants: (address, scope) -> (lease id, expiry).
#[derive(Default)]
pub struct LeaseTable {
    held: Mutex<HashMap<(Address, LeaseScope), (u64, Instant)>>,
}

impl LeaseTable {
    /// Grants the lease unless another live lease holds the address. Acquiring again
    /// with the same id extends it; a lease this node does not know (say, it
    /// restarted, or just joined the replica set) is granted if the address is free.
    pub fn acquire(
        &self,
        address: &Address,
        scope: LeaseScope,
        lease_id: u64,
        ttl: Duration,
    ) -> bool {
        let now = Instant::now();
        let name = (address.clone(), scope);
        let mut held = self.held.lock().expect("lease mutex poisoned");
        if let Some((holder, expires)) = held.get(&name)
            && *holder != lease_id
            && *expires > now
        {
            return false;
        }
        if held.len() >= LEASES_MAX {
            held.retain(|_, (_, expires)| *expires > now);
            if held.len() >= LEASES_MAX {
                return false;
            }
        }
        held.insert(name, (lease_id, now + ttl.min(LEASE_TTL)));
        true
    }

    pub fn release(&self, address: &Address, scope: LeaseScope, lease_id: u64) {
        let name = (address.clone(), scope);
        let mut held = self.held.lock().expect("lease mutex poisoned");
        if held.get(&name).map(|(holder, _)| *holder) == Some(lease_id) {
            held.remove(&name);
        }
    }
}

/// Proof that a POP3 session holds the maildrop of one address. Dropping it stops
/// the renewal and releases the lease at the coordinator.
pub struct MaildropLock {
    pub(crate) address: Address,
    pub(crate) key: RingKey,
    pub(crate) lease_id: u64,
    pub(crate) held: Arc<AtomicBool>,
    pub(crate) renewal: Option<tokio::task::JoinHandle<()>>,
    /// Runs once, at drop; in a `Mutex` only so that the guard is `Sync`.
    pub(crate) on_release: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl MaildropLock {
    pub fn address(&self) -> &Address {
        &self.address
    }

    pub fn key(&self) -> RingKey {
        self.key
    }

    /// Whether the lease is still ours: false once a renewal failed.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        if let Some(release) = self.on_release.get_mut().ok().and_then(Option::take) {
            release();
        }
    }
}

impl std::fmt::Debug for MaildropLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaildropLock")
            .field("address", &self.address)
            .field("lease_id", &self.lease_id)
            .finish()
    }
}

impl Mail {
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
        let scope = LeaseScope::Maildrop;
        let granted = self
            .lease_round(set, address, scope, lease_id, &holders)
            .await;
        let release = release_everywhere(
            self.clone(),
            address.clone(),
            scope,
            lease_id,
            holders.clone(),
        );
        if let Err(error) = granted {
            release();
            return Err(error);
        }
        let held = Arc::new(AtomicBool::new(true));
        let renewal = {
            let (mail, address, held, holders) =
                (self.clone(), address.clone(), held.clone(), holders.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_RENEW_PERIOD).await;
                    let renewed = match mail.replica_set(key).await {
                        Ok(set) => {
                            mail.lease_round(set, &address, scope, lease_id, &holders)
                                .await
                        }
                        Err(error) => Err(error),
                    };
                    if let Err(error) = renewed {
                        tracing::warn!(%address, %error, "maildrop lease lost");
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

    /// Asks every member of `set` to grant (or extend) the lease: the quorum
    /// fan-out, decided as soon as a majority granted or one member refused
    /// ([`MailError::InUse`]: another session holds it there). Members answering
    /// later still record themselves in `holders` for the release.
    pub(crate) async fn lease_round(
        &self,
        set: Vec<NodeRef>,
        address: &Address,
        scope: LeaseScope,
        lease_id: u64,
        holders: &SharedHolders,
    ) -> Result<(), MailError> {
        let (address, holders) = (address.clone(), holders.clone());
        self.quorum(set, "maildrop lease", Fanout::All, move |mail, node| {
            let (address, holders) = (address.clone(), holders.clone());
            async move {
                let member = mail.member(&node);
                if !member.acquire_lease(&address, scope, lease_id).await? {
                    return Err(MailError::InUse);
                }
                let late = {
                    let mut holders = holders.lock().expect("lease holders mutex poisoned");
                    if !holders.released && !holders.nodes.iter().any(|held| held.id == node.id) {
                        holders.nodes.push(node);
                    }
                    holders.released
                };
                if late {
                    // The lease was released (or refused) before this grant came
                    // back: give it back now, or it would block the maildrop until
                    // it expires.
                    let _ = member.release_lease(&address, scope, lease_id).await;
                }
                Ok(())
            }
        })
        .await
        .map(|_| ())
    }
}

/// The members that granted one session's lease, and whether it was released: a
/// grant that arrives after the release gives itself back.
#[derive(Default)]
pub(crate) struct LeaseHolders {
    nodes: Vec<NodeRef>,
    released: bool,
}

pub(crate) type SharedHolders = Arc<Mutex<LeaseHolders>>;

/// Releases the lease at every member that granted it: at once here (so that this
/// node's next session finds the maildrop free), in the background elsewhere (a
/// release that does not arrive expires with the TTL).
pub(crate) fn release_everywhere(
    mail: Mail,
    address: Address,
    scope: LeaseScope,
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
                mail.inner.local.leases.release(&address, scope, lease_id);
            } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (member, address) = (mail.member(&holder), address.clone());
                runtime.spawn(async move {
                    let _ = member.release_lease(&address, scope, lease_id).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_until_release_or_expiry() {
        let table = LeaseTable::default();
        let alice = Address::parse("alice@example.org").unwrap();
        assert!(table.acquire(&alice, LeaseScope::Maildrop, 1, LEASE_TTL));
        assert!(!table.acquire(&alice, LeaseScope::Maildrop, 2, LEASE_TTL));
        assert!(
            table.acquire(&alice, LeaseScope::Maildrop, 1, LEASE_TTL),
            "the holder extends its lease"
        );
        table.release(&alice, LeaseScope::Maildrop, 2);
        assert!(
            !table.acquire(&alice, LeaseScope::Maildrop, 2, LEASE_TTL),
            "only the holder releases"
        );
        table.release(&alice, LeaseScope::Maildrop, 1);
        assert!(table.acquire(&alice, LeaseScope::Maildrop, 2, Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            table.acquire(&alice, LeaseScope::Maildrop, 3, LEASE_TTL),
            "an expired lease is free"
        );
        assert!(
            !table.acquire(&alice, LeaseScope::Maildrop, 2, LEASE_TTL),
            "an expired holder cannot renew over a new one"
        );
        let uid_map = LeaseScope::UidMap(FolderId::INBOX);
        assert!(
            table.acquire(&alice, uid_map, 4, LEASE_TTL),
            "numbering is not the maildrop"
        );
        assert!(!table.acquire(&alice, uid_map, 5, LEASE_TTL));
        assert!(table.acquire(&alice, LeaseScope::UidMap(FolderId(9)), 5, LEASE_TTL));
    }
}
