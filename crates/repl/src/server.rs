//! The replication service: other nodes' reads and writes of this node's replicas.

use std::sync::Arc;
use std::time::Duration;

use crate::pb;
use tonic::{Request, Response, Status};

use crate::MailError;
use crate::convert::{
    account_to_pb, address_from_pb, folder_from_pb, id_from_pb, id_to_pb, mailbox_to_pb,
    writes_from_pb,
};
use crate::lease::LeaseScope;
use crate::local::LocalReplica;
use crate::replica::{Digests, Replica};

/// Answers the `Replica` gRPC service from the local replica.
pub struct ReplicaService {
    local: Arc<LocalReplica>,
    /// The mail service, for hand-offs; set once the node has joined its ring (the
    /// service must be served before that, during the join).
    mail: Arc<std::sync::OnceLock<crate::Mail>>,
}

impl ReplicaService {
    pub(crate) fn new(
        local: Arc<LocalReplica>,
        mail: Arc<std::sync::OnceLock<crate::Mail>>,
    ) -> ReplicaService {
        ReplicaService { local, mail }
    }

    /// The service, ready to be added to the node's gRPC server; hand-offs are
    /// answered once `mail` is set.
    pub fn server(
        local: Arc<LocalReplica>,
        mail: Arc<std::sync::OnceLock<crate::Mail>>,
    ) -> pb::replica_server::ReplicaServer<ReplicaService> {
        pb::replica_server::ReplicaServer::new(ReplicaService::new(local, mail))
            .max_decoding_message_size(crate::MESSAGE_BYTES_MAX_ON_WIRE)
            .max_encoding_message_size(crate::MESSAGE_BYTES_MAX_ON_WIRE)
    }
}

/// A subscriber's ring address (`host:port`) in bytes at most.
const SUBSCRIBER_ADDR_BYTES_MAX: usize = 300;

fn lease_scope(uid_map_folder: Option<&[u8]>) -> Result<LeaseScope, MailError> {
    Ok(match uid_map_folder {
        Some(folder) => LeaseScope::UidMap(folder_from_pb(folder)?),
        None => LeaseScope::Maildrop,
    })
}

fn status(error: MailError) -> Status {
    match error {
        MailError::Invalid(reason) => Status::invalid_argument(reason),
        other => Status::unavailable(other.to_string()),
    }
}

#[tonic::async_trait]
impl pb::replica_server::Replica for ReplicaService {
    async fn apply(&self, request: Request<pb::WriteBatch>) -> Result<Response<pb::Ack>, Status> {
        let writes = writes_from_pb(request.into_inner(), self.local.bits()).map_err(status)?;
        crate::checks::check_writes(&writes, crate::now_ms()).map_err(status)?;
        cm_types::metrics::REPLICA_WRITES_RECEIVED.add(writes.len() as u64);
        self.local.apply(writes).await.map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn read_account(
        &self,
        request: Request<pb::AddressRequest>,
    ) -> Result<Response<pb::AccountReply>, Status> {
        let request = request.into_inner();
        if !request.repair {
            self.local.check_serves_reads().map_err(status)?;
        }
        let address = address_from_pb(&request.address).map_err(status)?;
        let account = self.local.account(&address).await.map_err(status)?;
        Ok(Response::new(pb::AccountReply {
            account: account.as_ref().map(account_to_pb),
        }))
    }

    async fn read_mailbox(
        &self,
        request: Request<pb::AddressRequest>,
    ) -> Result<Response<pb::MailboxReply>, Status> {
        let request = request.into_inner();
        if !request.repair {
            self.local.check_serves_reads().map_err(status)?;
        }
        let address = address_from_pb(&request.address).map_err(status)?;
        let mailbox = self.local.mailbox(&address).await.map_err(status)?;
        Ok(Response::new(mailbox_to_pb(&mailbox)))
    }

    async fn read_body(
        &self,
        request: Request<pb::BodyRequest>,
    ) -> Result<Response<pb::BodyReply>, Status> {
        let request = request.into_inner();
        let address = address_from_pb(&request.address).map_err(status)?;
        let id = id_from_pb(&request.id).map_err(status)?;
        let folder = match &request.folder {
            Some(folder) => folder_from_pb(folder).map_err(status)?,
            None => cm_model::FolderId::INBOX,
        };
        let body = self
            .local
            .folder_body(&address, folder, id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::BodyReply { body }))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        // Notifications go to the subscriber's ring address: a peer may name only
        // its own, or it could aim this node's notifications at another host.
        crate::checks::check_claimed_addr(&request, &request.get_ref().subscriber_addr)?;
        let request = request.into_inner();
        let address = address_from_pb(&request.address).map_err(status)?;
        let folder = folder_from_pb(&request.folder).map_err(status)?;
        if request.subscriber_addr.len() > SUBSCRIBER_ADDR_BYTES_MAX {
            return Err(Status::invalid_argument("subscriber address too long"));
        }
        let subscriber = cm_ring::NodeRef {
            id: request.subscriber_id,
            addr: request.subscriber_addr,
        };
        let ttl = Duration::from_millis(request.ttl_ms).min(crate::imap::SUBSCRIPTION_TTL);
        self.local
            .watchers()
            .subscribe(&address, folder, &subscriber, ttl);
        Ok(Response::new(pb::Ack {}))
    }

    async fn notify(
        &self,
        request: Request<pb::FolderRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let request = request.into_inner();
        let address = address_from_pb(&request.address).map_err(status)?;
        let folder = folder_from_pb(&request.folder).map_err(status)?;
        self.local.watchers().fire(&address, folder);
        Ok(Response::new(pb::Ack {}))
    }

    async fn read_folders(
        &self,
        request: Request<pb::AddressRequest>,
    ) -> Result<Response<pb::FoldersReply>, Status> {
        let request = request.into_inner();
        if !request.repair {
            self.local.check_serves_reads().map_err(status)?;
        }
        let address = address_from_pb(&request.address).map_err(status)?;
        let folders = self.local.folders(&address).await.map_err(status)?;
        Ok(Response::new(pb::FoldersReply {
            folders: folders.encode(),
        }))
    }

    async fn read_folder(
        &self,
        request: Request<pb::FolderRequest>,
    ) -> Result<Response<pb::FolderReply>, Status> {
        let request = request.into_inner();
        if !request.repair {
            self.local.check_serves_reads().map_err(status)?;
        }
        let address = address_from_pb(&request.address).map_err(status)?;
        let folder = folder_from_pb(&request.folder).map_err(status)?;
        let state = self.local.folder(&address, folder).await.map_err(status)?;
        Ok(Response::new(pb::FolderReply {
            state: state.encode(),
        }))
    }

    async fn acquire_lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let request = request.into_inner();
        let address = address_from_pb(&request.address).map_err(status)?;
        let scope = lease_scope(request.uid_map_folder.as_deref()).map_err(status)?;
        let granted = self.local.leases.acquire(
            &address,
            scope,
            request.lease_id,
            Duration::from_millis(request.ttl_ms),
        );
        Ok(Response::new(pb::LeaseReply { granted }))
    }

    async fn release_lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let request = request.into_inner();
        let address = address_from_pb(&request.address).map_err(status)?;
        let scope = lease_scope(request.uid_map_folder.as_deref()).map_err(status)?;
        self.local.leases.release(&address, scope, request.lease_id);
        Ok(Response::new(pb::Ack {}))
    }

    async fn compare_digests(
        &self,
        request: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestReply>, Status> {
        let request = request.into_inner();
        if request.entries.len() + request.outbound.len() > crate::antientropy::DIGESTS_PER_CALL_MAX
        {
            return Err(Status::invalid_argument("too many digests in one call"));
        }
        let mut digests = Digests::default();
        for entry in request.entries {
            let address = address_from_pb(&entry.address).map_err(status)?;
            digests.addresses.push((address, entry.digest));
        }
        for entry in request.outbound {
            let id = id_from_pb(&entry.id).map_err(status)?;
            digests.outbound.push((id, entry.digest));
        }
        let differing = self.local.differing(&digests).await.map_err(status)?;
        Ok(Response::new(pb::DigestReply {
            differing: differing
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            differing_outbound: differing.outbound.into_iter().map(id_to_pb).collect(),
        }))
    }

    async fn list_accounts(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::AccountList>, Status> {
        let accounts = self.local.accounts().await.map_err(status)?;
        Ok(Response::new(pb::AccountList {
            accounts: accounts.iter().map(account_to_pb).collect(),
        }))
    }

    async fn handoff(
        &self,
        request: Request<pb::HandoffRequest>,
    ) -> Result<Response<pb::HandoffReply>, Status> {
        crate::checks::check_claimed_addr(&request, &request.get_ref().addr)?;
        let request = request.into_inner();
        let mail = self
            .mail
            .get()
            .ok_or_else(|| Status::unavailable("this node is still joining"))?;
        let requester = cm_ring::NodeRef {
            id: request.id,
            addr: request.addr,
        };
        let outcome = crate::antientropy::round_towards(
            mail,
            Some(&requester),
            crate::antientropy::HANDOFF_BYTES_MAX,
        )
        .await
        .map_err(status)?;
        tracing::info!(to = %requester.addr, n_writes = outcome.n_repaired, "handed off data to a new replica");
        Ok(Response::new(pb::HandoffReply {
            n_writes: outcome.n_repaired as u64,
        }))
    }
}
