//! Replication through the seam: several `Mail` services whose members are
//! in-memory replicas (each a real store in a temporary directory) that a test can
//! tell to fail, stall or lose their acknowledgements. Failures that the
//! process-level suites reach only by timing are reached here on purpose.
//!
//! The harness is here; the tests are by concern: `quorum` (writes, reads,
//! deletions, leases), `outbound` (the outbound queue) and `imap` (folders, flags,
//! UIDs, IDLE).

mod imap;
mod outbound;
mod quorum;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cm_model::{Account, FlagName, FolderId, FolderState, Folders, Mailbox, MessageId};
use cm_store::Write;

use super::*;
use crate::imap::Refusal;
use crate::lease::LeaseScope;

const REPLICAS: usize = 3;

/// What an in-memory member does wrong, switched on and off by the test.
#[derive(Default)]
struct Faults {
    /// Every call fails, as if the node were down or cut off.
    down: AtomicBool,
    /// `apply` fails before writing (a full or failing disk).
    refuse_writes: AtomicBool,
    /// `apply` writes, then fails: the acknowledgement is lost on the way.
    lose_acks: AtomicBool,
    /// Every call first waits this long (a slow or paused node).
    stall: Mutex<Duration>,
}

/// One node's replica as every other node sees it.
struct TestReplica {
    local: Arc<LocalReplica>,
    faults: Faults,
    _dir: tempfile::TempDir,
}

impl TestReplica {
    async fn enter(&self) -> Result<(), MailError> {
        let stall = *self.faults.stall.lock().unwrap();
        if !stall.is_zero() {
            tokio::time::sleep(stall).await;
        }
        if self.faults.down.load(Ordering::Acquire) {
            return Err(MailError::Unavailable(
                "test: this member is down".to_owned(),
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Replica for TestReplica {
    async fn apply(&self, writes: &[Write]) -> Result<(), MailError> {
        self.enter().await?;
        if self.faults.refuse_writes.load(Ordering::Acquire) {
            return Err(MailError::Storage(
                "test: this member refuses writes".to_owned(),
            ));
        }
        Replica::apply(&*self.local, writes).await?;
        if self.faults.lose_acks.load(Ordering::Acquire) {
            return Err(MailError::Unavailable(
                "test: the acknowledgement was lost".to_owned(),
            ));
        }
        Ok(())
    }
    async fn account(
        &self,
        address: &Address,
        read: ReadFor,
    ) -> Result<Option<Account>, MailError> {
        self.enter().await?;
        Replica::account(&*self.local, address, read).await
    }
    async fn mailbox(&self, address: &Address, read: ReadFor) -> Result<Mailbox, MailError> {
        self.enter().await?;
        Replica::mailbox(&*self.local, address, read).await
    }
    async fn body(&self, address: &Address, id: MessageId) -> Result<Option<Bytes>, MailError> {
        self.enter().await?;
        Replica::body(&*self.local, address, id).await
    }
    async fn accounts(&self) -> Result<Vec<Account>, MailError> {
        self.enter().await?;
        Replica::accounts(&*self.local).await
    }
    async fn folders(&self, address: &Address, read: ReadFor) -> Result<Folders, MailError> {
        self.enter().await?;
        Replica::folders(&*self.local, address, read).await
    }
    async fn folder(
        &self,
        address: &Address,
        folder: FolderId,
        read: ReadFor,
    ) -> Result<FolderState, MailError> {
        self.enter().await?;
        Replica::folder(&*self.local, address, folder, read).await
    }
    async fn folder_body(
        &self,
        address: &Address,
        folder: FolderId,
        id: MessageId,
    ) -> Result<Option<Bytes>, MailError> {
        self.enter().await?;
        Replica::folder_body(&*self.local, address, folder, id).await
    }
    async fn subscribe(
        &self,
        address: &Address,
        folder: FolderId,
        subscriber: &NodeRef,
    ) -> Result<(), MailError> {
        self.enter().await?;
        Replica::subscribe(&*self.local, address, folder, subscriber).await
    }
    async fn notify(&self, address: &Address, folder: FolderId) -> Result<(), MailError> {
        self.enter().await?;
        Replica::notify(&*self.local, address, folder).await
    }
    async fn acquire_lease(
        &self,
        address: &Address,
        scope: LeaseScope,
        lease_id: u64,
    ) -> Result<bool, MailError> {
        self.enter().await?;
        Replica::acquire_lease(&*self.local, address, scope, lease_id).await
    }
    async fn release_lease(
        &self,
        address: &Address,
        scope: LeaseScope,
        lease_id: u64,
    ) -> Result<(), MailError> {
        self.enter().await?;
        Replica::release_lease(&*self.local, address, scope, lease_id).await
    }
    async fn differing(&self, digests: &Digests) -> Result<Differing, MailError> {
        self.enter().await?;
        Replica::differing(&*self.local, digests).await
    }
    async fn ping(&self) -> Result<(), MailError> {
        self.enter().await
    }
}

/// Every node's replica, and the replica set every node sees (the same for all,
/// unless a test changes it).
struct Cluster {
    nodes: Vec<NodeRef>,
    replicas: Vec<Arc<TestReplica>>,
    set: Mutex<Vec<NodeRef>>,
    /// A replica set seen by one node only (node id -> set), as during a
    /// partition with sloppy quorums; the others see `set`.
    views: Mutex<std::collections::HashMap<u64, Vec<NodeRef>>>,
}

impl Cluster {
    fn replica(&self, node: &NodeRef) -> Arc<TestReplica> {
        let idx = self
            .nodes
            .iter()
            .position(|known| known.id == node.id)
            .unwrap();
        self.replicas[idx].clone()
    }
}

struct ClusterView {
    me: NodeRef,
    cluster: Arc<Cluster>,
}

#[tonic::async_trait]
impl Members for ClusterView {
    fn me(&self) -> NodeRef {
        self.me.clone()
    }
    async fn replica_set(&self, _key: RingKey) -> Result<Vec<NodeRef>, MailError> {
        if let Some(view) = self.cluster.views.lock().unwrap().get(&self.me.id) {
            return Ok(view.clone());
        }
        Ok(self.cluster.set.lock().unwrap().clone())
    }
    async fn cluster(&self) -> Vec<NodeRef> {
        self.cluster.nodes.clone()
    }
    fn member(&self, node: &NodeRef) -> Arc<dyn Replica> {
        self.cluster.replica(node)
    }
}

struct TestRing {
    cluster: Arc<Cluster>,
    /// One mail service per node, in node order.
    mail: Vec<Mail>,
}

impl TestRing {
    /// `n_nodes` nodes; the replica set of every key is the first three.
    fn new(n_nodes: usize) -> TestRing {
        let nodes: Vec<NodeRef> = (1..=n_nodes as u64)
            .map(|id| NodeRef {
                id,
                addr: format!("node-{id}"),
            })
            .collect();
        let replicas = nodes
            .iter()
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let store = Arc::new(Store::open(dir.path()).unwrap());
                Arc::new(TestReplica {
                    local: Arc::new(LocalReplica::new(store, 64)),
                    faults: Faults::default(),
                    _dir: dir,
                })
            })
            .collect();
        let cluster = Arc::new(Cluster {
            set: Mutex::new(nodes[..REPLICAS].to_vec()),
            views: Mutex::default(),
            nodes,
            replicas,
        });
        let mail = cluster
            .nodes
            .iter()
            .zip(&cluster.replicas)
            .map(|(node, replica)| {
                let config = MailConfig {
                    node_id: node.id,
                    bits: 64,
                    domains: vec!["example.org".into()],
                    replicas: REPLICAS,
                    successor_list_len: REPLICAS,
                };
                let view = ClusterView {
                    me: node.clone(),
                    cluster: cluster.clone(),
                };
                Mail::with_members(config, replica.local.clone(), Arc::new(view), None)
            })
            .collect();
        TestRing { cluster, mail }
    }

    fn faults(&self, node_idx: usize) -> &Faults {
        &self.cluster.replicas[node_idx].faults
    }

    /// How many nodes hold a tombstone of `address`.
    async fn n_tombstone_holders(&self, address: &Address) -> usize {
        let mut n_holders = 0;
        for mail in &self.mail {
            let (_, mailbox) = mail.local_replica(address).await.unwrap();
            n_holders += usize::from(!mailbox.tombstones.is_empty());
        }
        n_holders
    }

    /// How many nodes hold the message `id` of `address`.
    async fn n_message_holders(&self, address: &Address, id: MessageId) -> usize {
        let mut n_holders = 0;
        for mail in &self.mail {
            let (_, mailbox) = mail.local_replica(address).await.unwrap();
            n_holders += usize::from(mailbox.received.contains_key(&id));
        }
        n_holders
    }
}

fn address(text: &str) -> Address {
    Address::parse(text).unwrap()
}

async fn account_with_one_message(mail: &Mail, address: &Address) -> Vec<MessageId> {
    mail.create_account(address, "a long enough secret")
        .await
        .unwrap();
    mail.deliver(
        std::slice::from_ref(address),
        Bytes::from_static(b"Subject: keep me\r\n\r\nbody\r\n"),
    )
    .await
    .unwrap()
}
