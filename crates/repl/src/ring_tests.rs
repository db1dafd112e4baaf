//! Replication on a real ring of in-process nodes (loopback gRPC), where a test can
//! make chosen replicas refuse writes: failures that the process-level suites can
//! only reach by timing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cm_net::{RingDriver, RingOptions, Timing};
use cm_ring::{NodeRef, RingConfig};
use cm_store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::*;
use crate::server::ReplicaService;

const REPLICAS: usize = 3;

/// The replica service of one node, which refuses `Apply` while `refuse_writes` is
/// set (a full or failing disk, as the other nodes see it) and answers everything
/// else as usual.
struct Faulty {
    inner: ReplicaService,
    refuse_writes: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl pb::replica_server::Replica for Faulty {
    async fn apply(&self, request: Request<pb::WriteBatch>) -> Result<Response<pb::Ack>, Status> {
        if self.refuse_writes.load(Ordering::Acquire) {
            return Err(Status::unavailable("test: this replica refuses writes"));
        }
        self.inner.apply(request).await
    }
    async fn read_account(
        &self,
        request: Request<pb::AddressRequest>,
    ) -> Result<Response<pb::AccountReply>, Status> {
        self.inner.read_account(request).await
    }
    async fn read_mailbox(
        &self,
        request: Request<pb::AddressRequest>,
    ) -> Result<Response<pb::MailboxReply>, Status> {
        self.inner.read_mailbox(request).await
    }
    async fn read_body(
        &self,
        request: Request<pb::BodyRequest>,
    ) -> Result<Response<pb::BodyReply>, Status> {
        self.inner.read_body(request).await
    }
    async fn acquire_lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        self.inner.acquire_lease(request).await
    }
    async fn release_lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.inner.release_lease(request).await
    }
    async fn compare_digests(
        &self,
        request: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestReply>, Status> {
        self.inner.compare_digests(request).await
    }
    async fn list_accounts(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::AccountList>, Status> {
        self.inner.list_accounts(request).await
    }
    async fn handoff(
        &self,
        request: Request<pb::HandoffRequest>,
    ) -> Result<Response<pb::HandoffReply>, Status> {
        self.inner.handoff(request).await
    }
}

struct TestNode {
    mail: Mail,
    refuse_writes: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

/// A node on loopback (no anti-entropy), joined through `entry` if given.
async fn start_node(
    entry: Option<String>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<Result<(), cm_net::StartError>>,
) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let id: u64 = rand::random();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let local = Arc::new(LocalReplica::new(store, 64));
    let mail_cell = Arc::new(OnceLock::new());
    let refuse_writes = Arc::new(AtomicBool::new(false));
    let service = Faulty {
        inner: ReplicaService::new(local.clone(), mail_cell.clone()),
        refuse_writes: refuse_writes.clone(),
    };
    let routes = tonic::service::Routes::new(pb::replica_server::ReplicaServer::new(service));
    let config = RingConfig::new(64, REPLICAS);
    let options = RingOptions {
        me: NodeRef {
            id,
            addr: addr.clone(),
        },
        config,
        entry,
        remembered: Vec::new(),
        timing: Timing {
            stabilize: Duration::from_millis(50),
            fix_fingers: Duration::from_millis(50),
            fix_successors: Duration::from_millis(100),
            check_predecessor: Duration::from_millis(100),
            probe: Duration::from_millis(500),
            rpc_timeout: Duration::from_millis(500),
        },
        on_peers_changed: Box::new(|_| {}),
        tls: None,
    };
    let ring = RingDriver::start(options, listener, shutdown.clone(), tasks, routes)
        .await
        .unwrap();
    let mail_config = MailConfig {
        node_id: id,
        bits: 64,
        domains: vec!["example.org".into()],
        replicas: REPLICAS,
        successor_list_len: config.successor_list_len,
    };
    let mail = Mail::new(mail_config, local, Some(ring));
    assert!(mail_cell.set(mail.clone()).is_ok());
    TestNode {
        mail,
        refuse_writes,
        _dir: dir,
    }
}

/// `n` nodes whose views agree on the replica set of `address`; the members of
/// the set come first, in set order.
async fn ring_for(
    n: usize,
    address: &Address,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<Result<(), cm_net::StartError>>,
) -> Vec<TestNode> {
    let first = start_node(None, shutdown, tasks).await;
    let entry = first.mail.me().addr;
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(start_node(Some(entry.clone()), shutdown, tasks).await);
    }
    let key = nodes[0].mail.key(address);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut sets = Vec::new();
        for node in &nodes {
            sets.push(node.mail.replica_set(key).await.unwrap_or_default());
        }
        let whole = nodes.iter().all(|node| {
            node.mail
                .inner
                .ring
                .as_ref()
                .is_some_and(|ring| ring.successors().len() >= n - 1)
        });
        if whole && sets[0].len() == REPLICAS && sets.iter().all(|set| *set == sets[0]) {
            let order: Vec<u64> = sets[0].iter().map(|member| member.id).collect();
            nodes.sort_by_key(|node| {
                order
                    .iter()
                    .position(|id| *id == node.mail.me().id)
                    .unwrap_or(usize::MAX)
            });
            return nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ring of {n} did not form: {sets:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn account_with_one_message(session_node: &Mail, address: &Address) -> Vec<MessageId> {
    session_node
        .create_account(address, "a long enough secret")
        .await
        .unwrap();
    session_node
        .deliver(
            std::slice::from_ref(address),
            Bytes::from_static(b"Subject: keep me\r\n\r\nbody\r\n"),
        )
        .await
        .unwrap()
}

async fn holders_of_tombstones(nodes: &[TestNode], address: &Address) -> usize {
    let mut n_holders = 0;
    for node in nodes {
        let (_, mailbox) = node.mail.local_replica(address).await.unwrap();
        n_holders += usize::from(!mailbox.tombstones.is_empty());
    }
    n_holders
}

/// Regression test for fault seed 230: the other replicas failed while this node's
/// own copy of the tombstones was written, so a deletion answered `-ERR` took effect
/// later (anti-entropy spread the local tombstone). The local copy is now written
/// only after `W - 1` others hold theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deletion_leaves_no_tombstone_anywhere() {
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let address = Address::parse("refused@example.org").unwrap();
    let nodes = ring_for(3, &address, &shutdown, &mut tasks).await;
    let coordinator = &nodes[0].mail;
    let ids = account_with_one_message(coordinator, &address).await;

    let lock = coordinator.lock_maildrop(&address).await.unwrap();
    for node in &nodes[1..] {
        node.refuse_writes.store(true, Ordering::Release);
    }
    let refused = coordinator.delete(&lock, &ids).await;
    assert!(
        matches!(refused, Err(MailError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(
        holders_of_tombstones(&nodes, &address).await,
        0,
        "a refused deletion left tombstones"
    );
    for node in &nodes[1..] {
        node.refuse_writes.store(false, Ordering::Release);
    }
    assert_eq!(coordinator.list(&lock).await.unwrap().len(), 1);
    coordinator.delete(&lock, &ids).await.unwrap();
    assert!(coordinator.list(&lock).await.unwrap().is_empty());
    drop(lock);
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

/// Regression test for fault seed 753: a session on a node outside the replica set
/// reached one of the three replicas; the others failed, QUIT answered -ERR, and the
/// tombstone on that one replica made the deletion take effect later. A deletion
/// that reached some replica now keeps going until a write quorum holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_that_reached_one_replica_is_completed_not_refused() {
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let address = Address::parse("partial@example.org").unwrap();
    let nodes = ring_for(4, &address, &shutdown, &mut tasks).await;
    let (members, outsider) = (&nodes[..REPLICAS], &nodes[REPLICAS].mail);
    let ids = account_with_one_message(outsider, &address).await;
    let lock = outsider.lock_maildrop(&address).await.unwrap();
    members[1].refuse_writes.store(true, Ordering::Release);
    members[2].refuse_writes.store(true, Ordering::Release);
    let recovering = members[2].refuse_writes.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        recovering.store(false, Ordering::Release);
    });
    let started = std::time::Instant::now();
    outsider.delete(&lock, &ids).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "acknowledged before a write quorum could hold it"
    );
    assert!(holders_of_tombstones(members, &address).await >= 2);
    assert!(outsider.list(&lock).await.unwrap().is_empty());
    drop(lock);
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}
