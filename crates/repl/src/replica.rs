//! The seam between the mail service and the members of a replica set.
//!
//! [`Replica`] is what one member can do for `Mail`: apply writes durably, read an
//! account, a mailbox or a body, list accounts, grant maildrop leases and compare
//! digests. This node's member is its [`LocalReplica`]; another node's is a
//! [`RemoteReplica`](crate::remote::RemoteReplica) that makes the same calls over
//! gRPC. [`Members`] finds a key's replica set and hands out the member for each
//! node of it, so `Mail` never asks which kind it got; tests put in-memory members
//! behind it that fail, stall or lose acknowledgements on demand.

use std::sync::Arc;

use bytes::Bytes;
use cm_model::{Account, Mailbox, MessageId};
use cm_ring::NodeRef;
use cm_store::Write;
use cm_types::{Address, RingKey};

use crate::MailError;
use crate::lease::LEASE_TTL;
use crate::local::LocalReplica;

/// What anti-entropy compares with a member: a digest per address and per
/// outbound entry held here.
#[derive(Clone, Debug, Default)]
pub struct Digests {
    pub addresses: Vec<(Address, u64)>,
    pub outbound: Vec<(MessageId, u64)>,
}

/// The items of [`Digests`] a member holds differently (or lacks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Differing {
    pub addresses: Vec<Address>,
    pub outbound: Vec<MessageId>,
}

/// Why a read is made, which decides whether a replica that is catching up may
/// answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFor {
    /// A client's read: refused while the replica catches up, since it may miss
    /// acknowledged writes.
    Client,
    /// Anti-entropy comparing replicas: answered whatever the replica's state.
    Repair,
}

/// One member of a replica set, wherever it runs. Every method is one round trip
/// to that member; an `Err` means it did not answer or refused.
#[tonic::async_trait]
pub trait Replica: Send + Sync {
    /// Applies `writes` in one transaction; `Ok` only once they are fsynced.
    async fn apply(&self, writes: &[Write]) -> Result<(), MailError>;

    /// The stored account record, deleted ones included.
    async fn account(&self, address: &Address, read: ReadFor)
    -> Result<Option<Account>, MailError>;

    async fn mailbox(&self, address: &Address, read: ReadFor) -> Result<Mailbox, MailError>;

    /// A message's octets; `None` if it was never received here or was deleted.
    async fn body(&self, address: &Address, id: MessageId) -> Result<Option<Bytes>, MailError>;

    /// Every account record this member holds.
    async fn accounts(&self) -> Result<Vec<Account>, MailError>;

    /// Grants (or extends, for the same `lease_id`) the maildrop lease of
    /// `address` for [`LEASE_TTL`]; `Ok(false)` when another session holds it.
    async fn acquire_lease(&self, address: &Address, lease_id: u64) -> Result<bool, MailError>;

    async fn release_lease(&self, address: &Address, lease_id: u64) -> Result<(), MailError>;

    /// The addresses and outbound entries among `digests` whose state differs here
    /// (or that this member lacks); see [`crate::digest`].
    async fn differing(&self, digests: &Digests) -> Result<Differing, MailError>;

    /// `Ok` when the member answers now, as the node it is meant to be.
    async fn ping(&self) -> Result<(), MailError>;
}

/// Where the members of a key's replica set are and how to reach each of them.
#[tonic::async_trait]
pub trait Members: Send + Sync {
    /// This node.
    fn me(&self) -> NodeRef;

    /// The live replica set of `key`, coordinator first.
    async fn replica_set(&self, key: RingKey) -> Result<Vec<NodeRef>, MailError>;

    /// Every node of the ring, in ring order, each once.
    async fn cluster(&self) -> Vec<NodeRef>;

    /// The member on `node`: this node's own replica when `node` is this node,
    /// otherwise one that calls `node`. This is the one place that chooses.
    fn member(&self, node: &NodeRef) -> Arc<dyn Replica>;
}

/// A node without a ring (tests of the protocols): every key lives here only.
pub(crate) struct Solo {
    pub(crate) me: NodeRef,
    pub(crate) local: Arc<LocalReplica>,
}

#[tonic::async_trait]
impl Members for Solo {
    fn me(&self) -> NodeRef {
        self.me.clone()
    }

    async fn replica_set(&self, _key: RingKey) -> Result<Vec<NodeRef>, MailError> {
        Ok(vec![self.me.clone()])
    }

    async fn cluster(&self) -> Vec<NodeRef> {
        vec![self.me.clone()]
    }

    fn member(&self, node: &NodeRef) -> Arc<dyn Replica> {
        assert_eq!(
            node.id, self.me.id,
            "a node without a ring has no other members"
        );
        self.local.clone()
    }
}

#[tonic::async_trait]
impl Replica for LocalReplica {
    async fn apply(&self, writes: &[Write]) -> Result<(), MailError> {
        LocalReplica::apply(self, writes.to_vec()).await
    }

    async fn account(
        &self,
        address: &Address,
        read: ReadFor,
    ) -> Result<Option<Account>, MailError> {
        if read == ReadFor::Client {
            self.check_serves_reads()?;
        }
        LocalReplica::account(self, address).await
    }

    async fn mailbox(&self, address: &Address, read: ReadFor) -> Result<Mailbox, MailError> {
        if read == ReadFor::Client {
            self.check_serves_reads()?;
        }
        LocalReplica::mailbox(self, address).await
    }

    async fn body(&self, address: &Address, id: MessageId) -> Result<Option<Bytes>, MailError> {
        LocalReplica::body(self, address, id).await
    }

    async fn accounts(&self) -> Result<Vec<Account>, MailError> {
        LocalReplica::accounts(self).await
    }

    async fn acquire_lease(&self, address: &Address, lease_id: u64) -> Result<bool, MailError> {
        Ok(self.leases.acquire(address, lease_id, LEASE_TTL))
    }

    async fn release_lease(&self, address: &Address, lease_id: u64) -> Result<(), MailError> {
        self.leases.release(address, lease_id);
        Ok(())
    }

    async fn differing(&self, digests: &Digests) -> Result<Differing, MailError> {
        let mut differing = Differing::default();
        for (address, digest) in &digests.addresses {
            if self.digest_of(address).await? != *digest {
                differing.addresses.push(address.clone());
            }
        }
        for (id, digest) in &digests.outbound {
            if self.outbound_digest_of(*id)? != Some(*digest) {
                differing.outbound.push(*id);
            }
        }
        Ok(differing)
    }

    async fn ping(&self) -> Result<(), MailError> {
        Ok(())
    }
}
