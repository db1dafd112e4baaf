//! Another node's replica, reached over the `Replica` gRPC service
//! (`proto/replica.proto`, served by [`crate::ReplicaService`]).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use cm_model::{Account, FolderId, FolderState, Folders, Mailbox, MessageId};
use cm_net::RingHandle;
use cm_ring::NodeRef;
use cm_store::Write;
use cm_types::Address;
use cm_types::metrics;
use tonic::transport::Channel;

use crate::MailError;
use crate::convert::{
    account_from_pb, address_from_pb, folder_state_from_pb, folder_to_pb, folders_from_pb,
    id_from_pb, id_to_pb, mailbox_from_pb, writes_to_pb,
};
use crate::lease::{LEASE_TTL, LeaseScope};
use crate::pb;
use crate::pb::replica_client::ReplicaClient;
use crate::replica::{Differing, Digests, ReadFor, Replica};

/// Deadline of one replication call; bodies of up to 25 MiB must fit in it.
pub const REPLICA_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest gRPC message either side accepts: a whole message body (up to
/// `MESSAGE_BYTES_MAX`) plus framing. tonic's default of 4 MiB would refuse big mail.
pub const MESSAGE_BYTES_MAX_ON_WIRE: usize = cm_types::limits::MESSAGE_BYTES_MAX + 1024 * 1024;

/// The replica on `node`, called over the ring's reused channel to it.
pub struct RemoteReplica {
    ring: RingHandle,
    node: NodeRef,
}

impl RemoteReplica {
    pub fn new(ring: RingHandle, node: NodeRef) -> RemoteReplica {
        RemoteReplica { ring, node }
    }

    /// Runs one call within `deadline`; a failure or a missed deadline is
    /// [`MailError::Unavailable`] naming the member and the operation.
    async fn call<T, F>(
        &self,
        op: &'static str,
        deadline: Duration,
        call: impl FnOnce(ReplicaClient<Channel>) -> F,
    ) -> Result<T, MailError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let addr = &self.node.addr;
        let unavailable = || MailError::Unavailable(format!("replica {addr} did not answer {op}"));
        let channel = self.ring.peers().channel(addr).map_err(|_| unavailable())?;
        let client = ReplicaClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX_ON_WIRE)
            .max_encoding_message_size(MESSAGE_BYTES_MAX_ON_WIRE);
        match tokio::time::timeout(deadline, call(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                tracing::debug!(peer = %addr, op, code = ?status.code(), message = status.message(), "replica call failed");
                Err(unavailable())
            }
            Err(_) => {
                tracing::debug!(peer = %addr, op, "replica call missed its deadline");
                Err(unavailable())
            }
        }
    }

    /// Asks this node to push to `requester` the data of the keys it now
    /// replicates; answers with the number of writes pushed.
    pub async fn handoff(&self, requester: &NodeRef, deadline: Duration) -> Result<u64, MailError> {
        let request = pb::HandoffRequest {
            id: requester.id,
            addr: requester.addr.clone(),
        };
        let reply = self
            .call("handoff", deadline, |mut client| async move {
                client.handoff(request).await
            })
            .await?;
        Ok(reply.n_writes)
    }

    fn address_request(address: &Address, read: ReadFor) -> pb::AddressRequest {
        pb::AddressRequest {
            address: address.to_string(),
            repair: read == ReadFor::Repair,
        }
    }

    fn lease_request(address: &Address, scope: LeaseScope, lease_id: u64) -> pb::LeaseRequest {
        let (ttl, uid_map_folder) = match scope {
            LeaseScope::Maildrop => (LEASE_TTL, None),
            LeaseScope::UidMap(folder) => (crate::imap::UID_LEASE_TTL, Some(folder_to_pb(folder))),
        };
        pb::LeaseRequest {
            address: address.to_string(),
            lease_id,
            ttl_ms: ttl.as_millis() as u64,
            uid_map_folder,
        }
    }
}

#[tonic::async_trait]
impl Replica for RemoteReplica {
    async fn apply(&self, writes: &[Write]) -> Result<(), MailError> {
        let batch = writes_to_pb(writes);
        metrics::REPLICA_WRITES_SENT.add(writes.len() as u64);
        let started = std::time::Instant::now();
        let outcome = self
            .call("apply", REPLICA_CALL_TIMEOUT, |mut client| async move {
                client.apply(batch).await
            })
            .await;
        // Failures and timeouts count too: a peer that stalls is what this shows.
        metrics::REPLICA_REMOTE_WRITE_SECONDS.observe_duration(started.elapsed());
        outcome.map(|_| ())
    }

    async fn account(
        &self,
        address: &Address,
        read: ReadFor,
    ) -> Result<Option<Account>, MailError> {
        let request = Self::address_request(address, read);
        let reply = self
            .call(
                "read_account",
                REPLICA_CALL_TIMEOUT,
                |mut client| async move { client.read_account(request).await },
            )
            .await?;
        reply.account.map(account_from_pb).transpose()
    }

    async fn mailbox(&self, address: &Address, read: ReadFor) -> Result<Mailbox, MailError> {
        let request = Self::address_request(address, read);
        let reply = self
            .call(
                "read_mailbox",
                REPLICA_CALL_TIMEOUT,
                |mut client| async move { client.read_mailbox(request).await },
            )
            .await?;
        mailbox_from_pb(reply)
    }

    async fn body(&self, address: &Address, id: MessageId) -> Result<Option<Bytes>, MailError> {
        let request = pb::BodyRequest {
            address: address.to_string(),
            id: id_to_pb(id),
            folder: None,
        };
        let reply = self
            .call("read_body", REPLICA_CALL_TIMEOUT, |mut client| async move {
                client.read_body(request).await
            })
            .await?;
        Ok(reply.body)
    }

    async fn accounts(&self) -> Result<Vec<Account>, MailError> {
        let reply = self
            .call(
                "list_accounts",
                REPLICA_CALL_TIMEOUT,
                |mut client| async move { client.list_accounts(pb::Empty {}).await },
            )
            .await?;
        reply.accounts.into_iter().map(account_from_pb).collect()
    }

    async fn folders(&self, address: &Address, read: ReadFor) -> Result<Folders, MailError> {
        let request = Self::address_request(address, read);
        let reply = self
            .call(
                "read_folders",
                REPLICA_CALL_TIMEOUT,
                |mut client| async move { client.read_folders(request).await },
            )
            .await?;
        folders_from_pb(&reply.folders)
    }

    async fn folder(
        &self,
        address: &Address,
        folder: FolderId,
        read: ReadFor,
    ) -> Result<FolderState, MailError> {
        let request = pb::FolderRequest {
            address: address.to_string(),
            folder: folder_to_pb(folder),
            repair: read == ReadFor::Repair,
        };
        let reply = self
            .call(
                "read_folder",
                REPLICA_CALL_TIMEOUT,
                |mut client| async move { client.read_folder(request).await },
            )
            .await?;
        folder_state_from_pb(&reply.state)
    }

    async fn folder_body(
        &self,
        address: &Address,
        folder: FolderId,
        id: MessageId,
    ) -> Result<Option<Bytes>, MailError> {
        let request = pb::BodyRequest {
            address: address.to_string(),
            id: id_to_pb(id),
            folder: (folder != FolderId::INBOX).then(|| folder_to_pb(folder)),
        };
        let reply = self
            .call("read_body", REPLICA_CALL_TIMEOUT, |mut client| async move {
                client.read_body(request).await
            })
            .await?;
        Ok(reply.body)
    }

    async fn subscribe(
        &self,
        address: &Address,
        folder: FolderId,
        subscriber: &NodeRef,
    ) -> Result<(), MailError> {
        let request = pb::SubscribeRequest {
            address: address.to_string(),
            folder: folder_to_pb(folder),
            subscriber_id: subscriber.id,
            subscriber_addr: subscriber.addr.clone(),
            ttl_ms: crate::imap::SUBSCRIPTION_TTL.as_millis() as u64,
        };
        self.call("subscribe", REPLICA_CALL_TIMEOUT, |mut client| async move {
            client.subscribe(request).await
        })
        .await
        .map(|_| ())
    }

    async fn notify(&self, address: &Address, folder: FolderId) -> Result<(), MailError> {
        let request = pb::FolderRequest {
            address: address.to_string(),
            folder: folder_to_pb(folder),
            repair: false,
        };
        self.call("notify", REPLICA_CALL_TIMEOUT, |mut client| async move {
            client.notify(request).await
        })
        .await
        .map(|_| ())
    }

    async fn acquire_lease(
        &self,
        address: &Address,
        scope: LeaseScope,
        lease_id: u64,
    ) -> Result<bool, MailError> {
        let request = Self::lease_request(address, scope, lease_id);
        let reply = self
            .call(
                "acquire_lease",
                REPLICA_CALL_TIMEOUT,
                |mut client| async move { client.acquire_lease(request).await },
            )
            .await?;
        Ok(reply.granted)
    }

    async fn release_lease(
        &self,
        address: &Address,
        scope: LeaseScope,
        lease_id: u64,
    ) -> Result<(), MailError> {
        let request = Self::lease_request(address, scope, lease_id);
        self.call(
            "release_lease",
            REPLICA_CALL_TIMEOUT,
            |mut client| async move { client.release_lease(request).await },
        )
        .await
        .map(|_| ())
    }

    async fn differing(&self, digests: &Digests) -> Result<Differing, MailError> {
        let request = pb::DigestRequest {
            entries: digests
                .addresses
                .iter()
                .map(|(address, digest)| pb::AddressDigest {
                    address: address.to_string(),
                    digest: *digest,
                })
                .collect(),
            outbound: digests
                .outbound
                .iter()
                .map(|(id, digest)| pb::OutboundDigest {
                    id: id_to_pb(*id),
                    digest: *digest,
                })
                .collect(),
        };
        let reply = self
            .call(
                "compare_digests",
                REPLICA_CALL_TIMEOUT,
                |mut client| async move { client.compare_digests(request).await },
            )
            .await?;
        Ok(Differing {
            addresses: reply
                .differing
                .iter()
                .map(|text| address_from_pb(text))
                .collect::<Result<_, _>>()?,
            outbound: reply
                .differing_outbound
                .iter()
                .map(|id| id_from_pb(id))
                .collect::<Result<_, _>>()?,
        })
    }

    /// A ring call (not a replication one): the node must answer with the id this
    /// member is known by, or it is another node at a reused address.
    async fn ping(&self) -> Result<(), MailError> {
        match self.ring.peers().get_state(&self.node.addr).await {
            Ok(state) if state.node.id == self.node.id => Ok(()),
            _ => Err(MailError::Unavailable(format!(
                "replica {} does not answer",
                self.node.addr
            ))),
        }
    }
}
