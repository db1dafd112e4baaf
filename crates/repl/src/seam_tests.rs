//! Replication through the seam: several `Mail` services whose members are
//! in-memory replicas (each a real store in a temporary directory) that a test can
//! tell to fail, stall or lose their acknowledgements. Failures that the
//! process-level suites reach only by timing are reached here on purpose.

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

/// Regression test for fault seed 230: the other replicas failed while this node's
/// own copy of the tombstones was written, so a deletion answered `-ERR` took effect
/// later (anti-entropy spread the local tombstone). The local copy is now written
/// only after `W - 1` others hold theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deletion_leaves_no_tombstone_anywhere() {
    let ring = TestRing::new(3);
    let alice = address("refused@example.org");
    let coordinator = &ring.mail[0];
    let ids = account_with_one_message(coordinator, &alice).await;
    let lock = coordinator.lock_maildrop(&alice).await.unwrap();
    for node_idx in 1..3 {
        ring.faults(node_idx)
            .refuse_writes
            .store(true, Ordering::Release);
    }
    let refused = coordinator.delete(&lock, &ids).await;
    assert!(
        matches!(refused, Err(MailError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(
        ring.n_tombstone_holders(&alice).await,
        0,
        "a refused deletion left tombstones"
    );

    for node_idx in 1..3 {
        ring.faults(node_idx)
            .refuse_writes
            .store(false, Ordering::Release);
    }
    assert_eq!(coordinator.list(&lock).await.unwrap().len(), 1);
    coordinator.delete(&lock, &ids).await.unwrap();
    assert!(coordinator.list(&lock).await.unwrap().is_empty());
    assert!(
        ring.n_tombstone_holders(&alice).await >= 2,
        "acknowledged below W"
    );
}

/// Regression test for fault seed 753: a session on a node outside the replica set
/// reached one of the three replicas; the others failed, QUIT answered -ERR, and the
/// tombstone on that one replica made the deletion take effect later. A deletion
/// that reached some replica now keeps going until a write quorum holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_that_reached_one_replica_is_completed_not_refused() {
    let ring = TestRing::new(4);
    let alice = address("partial@example.org");
    let outsider = &ring.mail[3];
    let ids = account_with_one_message(outsider, &alice).await;
    let lock = outsider.lock_maildrop(&alice).await.unwrap();
    ring.faults(1).refuse_writes.store(true, Ordering::Release);
    ring.faults(2).refuse_writes.store(true, Ordering::Release);
    let cluster = ring.cluster.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.replicas[2]
            .faults
            .refuse_writes
            .store(false, Ordering::Release);
    });
    let started = Instant::now();
    outsider.delete(&lock, &ids).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "acknowledged before a write quorum could hold it"
    );
    assert!(ring.n_tombstone_holders(&alice).await >= 2);
    assert!(outsider.list(&lock).await.unwrap().is_empty());
}

/// Goal: a write quorum counts distinct nodes. Method: the replica set names one
/// node twice (views merged during churn) and the only other member refuses
/// writes; before the fan-out deduplicated, the twice-named node's two answers
/// made a quorum of one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_named_twice_counts_once() {
    let ring = TestRing::new(3);
    let alice = address("twice@example.org");
    ring.mail[0]
        .create_account(&alice, "a long enough secret")
        .await
        .unwrap();
    let nodes = ring.cluster.nodes.clone();
    *ring.cluster.set.lock().unwrap() = vec![nodes[0].clone(), nodes[1].clone(), nodes[1].clone()];
    ring.faults(0).refuse_writes.store(true, Ordering::Release);
    let refused = ring.mail[2]
        .deliver(std::slice::from_ref(&alice), Bytes::from_static(b"x\r\n"))
        .await;
    assert!(
        matches!(refused, Err(MailError::Unavailable(_))),
        "{refused:?}"
    );

    ring.faults(0).refuse_writes.store(false, Ordering::Release);
    let ids = ring.mail[2]
        .deliver(std::slice::from_ref(&alice), Bytes::from_static(b"x\r\n"))
        .await
        .unwrap();
    assert_eq!(ring.n_message_holders(&alice, ids[0]).await, 2);
}

/// Goal: slow members delay an acknowledgement but never weaken it. Method: two of
/// three members stall 300 ms; the delivery waits for one of them (W = 2) and is
/// then on two nodes at least; a mailbox read gives the slow members their grace
/// and merges what they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_slow_members_is_waited_for() {
    let ring = TestRing::new(3);
    let alice = address("slow@example.org");
    let ids = account_with_one_message(&ring.mail[0], &alice).await;
    for node_idx in 1..3 {
        *ring.faults(node_idx).stall.lock().unwrap() = Duration::from_millis(300);
    }
    let started = Instant::now();
    let more = ring.mail[0]
        .deliver(
            std::slice::from_ref(&alice),
            Bytes::from_static(b"late\r\n"),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "acknowledged before W copies"
    );
    assert!(ring.n_message_holders(&alice, more[0]).await >= 2);

    let lock = ring.mail[0].lock_maildrop(&alice).await.unwrap();
    let listed: Vec<MessageId> = ring.mail[0]
        .list(&lock)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, vec![ids[0], more[0]]);
}

/// Goal: a member that is down or stalled past the read grace does not hold up a
/// mailbox read, and a member that answers within the grace is merged. Method: a
/// tombstone sits on one member only (the others lost it, say to a disk loss);
/// while it stalls past the grace the read misses it; when it answers within the
/// grace the read sees it and repairs the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_read_waits_only_the_grace_for_stragglers() {
    let ring = TestRing::new(3);
    let alice = address("grace@example.org");
    let ids = account_with_one_message(&ring.mail[0], &alice).await;
    let key = cm_types::key_of_address(&alice, 64);
    let tombstone = Write::Tombstone {
        key,
        address: alice.clone(),
        id: ids[0],
        deleted_ms: now_ms(),
    };
    ring.cluster.replicas[2]
        .local
        .apply(vec![tombstone])
        .await
        .unwrap();

    *ring.faults(2).stall.lock().unwrap() = READ_STRAGGLER_GRACE * 3;
    let lock = ring.mail[0].lock_maildrop(&alice).await.unwrap();
    let started = Instant::now();
    assert_eq!(
        ring.mail[0].list(&lock).await.unwrap().len(),
        1,
        "the straggler's tombstone came in time?"
    );
    assert!(
        started.elapsed() < READ_STRAGGLER_GRACE * 2,
        "waited past the grace"
    );

    *ring.faults(2).stall.lock().unwrap() = READ_STRAGGLER_GRACE / 5;
    assert!(
        ring.mail[0].list(&lock).await.unwrap().is_empty(),
        "the tombstone was not merged"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while ring.n_tombstone_holders(&alice).await < 3 {
        assert!(
            Instant::now() < deadline,
            "read repair did not copy the tombstone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Goal: a write whose acknowledgements were lost is refused, not counted. Method:
/// two of three members apply the delivery and lose the answer; the client is told
/// to retry (451) although the copies exist: docs/DESIGN.md's "a refused write may
/// appear later, whole" — never the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgements_refuse_the_write() {
    let ring = TestRing::new(3);
    let alice = address("lost@example.org");
    ring.mail[0]
        .create_account(&alice, "a long enough secret")
        .await
        .unwrap();
    ring.faults(1).lose_acks.store(true, Ordering::Release);
    ring.faults(2).lose_acks.store(true, Ordering::Release);
    ring.faults(0).refuse_writes.store(true, Ordering::Release);
    let refused = ring.mail[0]
        .deliver(
            std::slice::from_ref(&alice),
            Bytes::from_static(b"lost\r\n"),
        )
        .await;
    assert!(
        matches!(refused, Err(MailError::Unavailable(_))),
        "{refused:?}"
    );
    let (_, mailbox) = ring.mail[1].local_replica(&alice).await.unwrap();
    assert_eq!(
        mailbox.received.len(),
        1,
        "the member applied the write before losing the answer"
    );

    ring.faults(2).lose_acks.store(false, Ordering::Release);
    let still_refused = ring.mail[0]
        .deliver(
            std::slice::from_ref(&alice),
            Bytes::from_static(b"short\r\n"),
        )
        .await;
    assert!(
        still_refused.is_err(),
        "one answer (of W = 2) acknowledged a write"
    );
    ring.faults(0).refuse_writes.store(false, Ordering::Release);
    ring.mail[0]
        .deliver(
            std::slice::from_ref(&alice),
            Bytes::from_static(b"kept\r\n"),
        )
        .await
        .expect("two members answered");
}

/// Goal: two sessions never hold one maildrop, and a member that is down does not
/// stop a majority. Method: one member down, a first session locks with the other
/// two; a second session through another node is refused `InUse`; after the first
/// lock is dropped the second gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maildrop_lease_needs_a_majority_and_excludes_others() {
    let ring = TestRing::new(3);
    let alice = address("lease@example.org");
    ring.faults(2).down.store(true, Ordering::Release);
    let first = ring.mail[0].lock_maildrop(&alice).await.unwrap();
    assert!(matches!(
        ring.mail[1].lock_maildrop(&alice).await,
        Err(MailError::InUse)
    ));
    ring.faults(1).down.store(true, Ordering::Release);
    assert!(
        matches!(
            ring.mail[0]
                .lock_maildrop(&address("other@example.org"))
                .await,
            Err(MailError::Unavailable(_))
        ),
        "one of three members granted a lease"
    );
    ring.faults(1).down.store(false, Ordering::Release);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ring.mail[1].lock_maildrop(&alice).await {
            Ok(_) => break,
            Err(MailError::InUse) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(error) => panic!("the released maildrop stayed locked: {error}"),
        }
    }
}

/// How many nodes hold a live copy of the outbound entry `id`, and how many its body.
async fn n_outbound_holders(ring: &TestRing, id: MessageId) -> (usize, usize) {
    let key = cm_types::key_of_outbound(id.as_u128(), 64);
    let (mut n_entries, mut n_bodies) = (0, 0);
    for mail in &ring.mail {
        let entry = mail.store().outbound(key, id).unwrap();
        n_entries += usize::from(entry.is_some_and(|entry| entry.removed_ms.is_none()));
        n_bodies += usize::from(mail.store().outbound_body(key, id).unwrap().is_some());
    }
    (n_entries, n_bodies)
}

/// Goal: an outbound entry is on a write quorum when `enqueue` returns, reaches the
/// member that was down by anti-entropy, is due only at the coordinator of its key,
/// moves to the next member when the coordinator leaves the set (takeover), and
/// its removal spreads and drops the body everywhere. Method: one member down at
/// enqueue; an anti-entropy round; the set changed by hand as a crash would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_entries_are_replicated_due_at_their_coordinator_and_taken_over() {
    let ring = TestRing::new(3);
    let (alice, bob) = (address("alice@example.org"), address("bob@b.test"));
    ring.faults(2).down.store(true, Ordering::Release);
    let id = ring.mail[1]
        .enqueue(
            Some(&alice),
            std::slice::from_ref(&bob),
            Bytes::from_static(b"hello\r\n"),
        )
        .await
        .unwrap();
    assert_eq!(n_outbound_holders(&ring, id).await, (2, 2));
    ring.faults(2).down.store(false, Ordering::Release);
    antientropy::round(&ring.mail[0]).await.unwrap();
    assert_eq!(
        n_outbound_holders(&ring, id).await,
        (3, 3),
        "anti-entropy did not copy it"
    );

    let later = now_ms() + 1_000;
    let due_at = |node_idx: usize| {
        let mail = ring.mail[node_idx].clone();
        async move { mail.outbound_due(later, 10).await.unwrap().due }
    };
    let due = due_at(0).await;
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].0.recipients.clone(), &due[0].1[..]),
        (vec!["bob@b.test".to_owned()], &b"hello\r\n"[..])
    );
    assert!(
        due_at(1).await.is_empty(),
        "a non-coordinator would deliver too"
    );

    let nodes = ring.cluster.nodes.clone();
    *ring.cluster.set.lock().unwrap() = nodes[1..].to_vec();
    let (mut entry, _) = due_at(1).await.pop().expect("the next member took over");
    entry
        .outcomes
        .insert("bob@b.test".to_owned(), cm_model::Outcome::Delivered);
    entry.removed_ms = Some(now_ms());
    ring.mail[1].update_outbound(entry).await.unwrap();
    *ring.cluster.set.lock().unwrap() = nodes.clone();
    antientropy::round(&ring.mail[1]).await.unwrap();
    assert_eq!(
        n_outbound_holders(&ring, id).await,
        (0, 0),
        "the removal did not spread"
    );
    assert!(due_at(0).await.is_empty());
    assert!(ring.mail[0].outbound_held(10).await.unwrap().is_empty());
}

/// Waits until the three members hold the same copy of the outbound entry `id`:
/// a write returns at `W` = 2, and the third member's copy may still be on its way.
async fn outbound_everywhere(ring: &TestRing, id: MessageId) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let digests: Vec<Option<u64>> = ring.mail[..REPLICAS]
            .iter()
            .map(|mail| mail.local().outbound_digest_of(id).unwrap())
            .collect();
        if digests[0].is_some() && digests.iter().all(|digest| *digest == digests[0]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the members' copies differ: {digests:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Goal: an operator's retry makes a deferred entry due at once, and a delete
/// removes it without delivery; both need a copy on the node asked. Method: defer
/// the entry an hour, retry through a member, then delete through another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_entries_are_retried_and_deleted_by_operators() {
    let ring = TestRing::new(4);
    let bob = address("bob@b.test");
    let id = ring.mail[0]
        .enqueue(
            None,
            std::slice::from_ref(&bob),
            Bytes::from_static(b"x\r\n"),
        )
        .await
        .unwrap();
    outbound_everywhere(&ring, id).await;
    let (mut entry, _) = ring.mail[0]
        .outbound_due(now_ms(), 10)
        .await
        .unwrap()
        .due
        .pop()
        .unwrap();
    assert_eq!(entry.sender, "", "the null sender");
    entry.next_attempt = (ring.mail[0].next_version(), now_ms() + 3_600_000);
    ring.mail[0].update_outbound(entry).await.unwrap();
    outbound_everywhere(&ring, id).await;
    assert!(
        ring.mail[0]
            .outbound_due(now_ms(), 10)
            .await
            .unwrap()
            .due
            .is_empty()
    );
    assert!(ring.mail[1].retry_outbound(id).await.unwrap());
    outbound_everywhere(&ring, id).await;
    assert_eq!(
        ring.mail[0]
            .outbound_due(now_ms() + 10, 10)
            .await
            .unwrap()
            .due
            .len(),
        1
    );
    assert!(
        !ring.mail[3].delete_outbound(id).await.unwrap(),
        "node 3 holds no copy"
    );
    assert!(ring.mail[2].delete_outbound(id).await.unwrap());
    outbound_everywhere(&ring, id).await;
    assert!(
        ring.mail[0]
            .outbound_due(now_ms() + 10, 10)
            .await
            .unwrap()
            .due
            .is_empty()
    );
}

// IMAP through the seam (docs/DESIGN.md §11).

/// Each node's resolved UIDs of `folder`, from its own replica.
async fn uids_everywhere(
    ring: &TestRing,
    address: &Address,
    folder: FolderId,
) -> Vec<std::collections::BTreeMap<MessageId, u32>> {
    let mut all = Vec::new();
    for mail in &ring.mail {
        let state = mail.local_folder(address, folder).await.unwrap();
        all.push(state.uids.resolve().uid_of);
    }
    all
}

async fn deliver(mail: &Mail, address: &Address, n_messages: usize) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for idx in 0..n_messages {
        let body = Bytes::from(format!("Subject: {idx}\r\n\r\nbody {idx}\r\n"));
        ids.extend(
            mail.deliver(std::slice::from_ref(address), body)
                .await
                .unwrap(),
        );
    }
    ids
}

/// Goal: UIDs are the same whichever node numbers, and sessions numbering at once
/// through different nodes never give one message two UIDs nor one UID two
/// messages. Method: deliver, number through all three nodes concurrently (the
/// UID map's lease serialises them), then compare what each session saw and what
/// each replica holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbering_is_the_same_on_every_replica() {
    let ring = TestRing::new(3);
    let alice = address("numbers@example.org");
    let ids = account_with_one_message(&ring.mail[0], &alice).await;
    let more = deliver(&ring.mail[1], &alice, 4).await;
    let mut sessions = tokio::task::JoinSet::new();
    for mail in ring.mail.clone() {
        let alice = alice.clone();
        sessions.spawn(async move { mail.numbered_folder(&alice, FolderId::INBOX).await });
    }
    let mut seen = Vec::new();
    while let Some(outcome) = sessions.join_next().await {
        seen.push(outcome.unwrap().unwrap().uids.resolve().uid_of);
    }
    let expected: std::collections::BTreeMap<MessageId, u32> = ids
        .iter()
        .chain(&more)
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .zip(1..)
        .collect();
    assert!(seen.iter().all(|uids| *uids == expected), "{seen:?}");
    // Every replica of the write quorum holds the claims; the third gets them by
    // read repair or anti-entropy.
    antientropy::round(&ring.mail[0]).await.unwrap();
    for uids in uids_everywhere(&ring, &alice, FolderId::INBOX).await {
        assert_eq!(uids, expected);
    }
    // A later delivery is numbered above, the earlier UIDs stay.
    let late = deliver(&ring.mail[2], &alice, 1).await[0];
    let state = ring.mail[1]
        .numbered_folder(&alice, FolderId::INBOX)
        .await
        .unwrap();
    let uids = state.uids.resolve().uid_of;
    assert_eq!(uids[&late], 6);
    assert!(expected.iter().all(|(id, uid)| uids[id] == *uid));
    assert_eq!(state.counts().uid_next, 7);
}

/// Goal: a numbering whose write is refused numbers nothing a client can see, and
/// the next numbering is still consistent. Method: two of three members refuse
/// writes, so the claims reach one replica only and the call fails; once they
/// recover, numbering through another node gives each message one UID, the same
/// everywhere after anti-entropy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_numbering_numbers_nothing() {
    let ring = TestRing::new(3);
    let alice = address("refused-numbers@example.org");
    account_with_one_message(&ring.mail[0], &alice).await;
    deliver(&ring.mail[0], &alice, 2).await;
    ring.faults(1).refuse_writes.store(true, Ordering::Release);
    ring.faults(2).refuse_writes.store(true, Ordering::Release);
    assert!(matches!(
        ring.mail[0].numbered_folder(&alice, FolderId::INBOX).await,
        Err(MailError::Unavailable(_))
    ));
    ring.faults(1).refuse_writes.store(false, Ordering::Release);
    ring.faults(2).refuse_writes.store(false, Ordering::Release);
    let state = ring.mail[2]
        .numbered_folder(&alice, FolderId::INBOX)
        .await
        .unwrap();
    let shown = state.messages();
    assert_eq!(shown.len(), 3);
    assert!(shown.windows(2).all(|pair| pair[0].uid < pair[1].uid));
    antientropy::round(&ring.mail[0]).await.unwrap();
    antientropy::round(&ring.mail[1]).await.unwrap();
    let everywhere = uids_everywhere(&ring, &alice, FolderId::INBOX).await;
    assert!(
        everywhere
            .iter()
            .all(|uids| *uids == everywhere[0] && uids.len() == 3)
    );
}

/// Goal: IMAP's EXPUNGE in INBOX and POP3's DELE are one deletion. Method: expunge
/// through one node and list the maildrop through another; delete with POP3 and
/// look at INBOX through IMAP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expunge_in_inbox_and_pop3_deletion_are_one() {
    let ring = TestRing::new(3);
    let alice = address("both@example.org");
    let first = account_with_one_message(&ring.mail[0], &alice).await[0];
    let second = deliver(&ring.mail[0], &alice, 1).await[0];
    let state = ring.mail[1]
        .numbered_folder(&alice, FolderId::INBOX)
        .await
        .unwrap();
    assert_eq!(state.messages().len(), 2);

    ring.mail[1]
        .expunge(&alice, FolderId::INBOX, &[first])
        .await
        .unwrap();
    let lock = ring.mail[2].lock_maildrop(&alice).await.unwrap();
    let listed: Vec<MessageId> = ring.mail[2]
        .list(&lock)
        .await
        .unwrap()
        .iter()
        .map(|info| info.id)
        .collect();
    assert_eq!(listed, [second]);

    ring.mail[2].delete(&lock, &[second]).await.unwrap();
    drop(lock);
    let state = ring.mail[0]
        .numbered_folder(&alice, FolderId::INBOX)
        .await
        .unwrap();
    assert!(state.messages().is_empty());
    assert_eq!(state.counts().uid_next, 3, "UIDs are never reused");
}

/// Goal: folders, APPEND, flags, COPY and MOVE replicate, and a member that missed
/// them catches up by anti-entropy, octets included. Method: one member is down
/// while the account's folders change; then one anti-entropy round from a node
/// that has everything must make the member's copy equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_flags_and_copies_replicate_and_repair() {
    let ring = TestRing::new(3);
    let alice = address("folders@example.org");
    let inbox_id = account_with_one_message(&ring.mail[0], &alice).await[0];
    ring.faults(2).down.store(true, Ordering::Release);

    let mail = &ring.mail[0];
    mail.create_folder(&alice, "Work").await.unwrap().unwrap();
    assert_eq!(
        mail.create_folder(&alice, "Work").await.unwrap(),
        Err(Refusal::Exists)
    );
    let work = ring.mail[1]
        .folder_named(&alice, "Work")
        .await
        .unwrap()
        .expect("the folder is seen through another node");
    let flagged = FlagName::parse("\\Flagged").unwrap();
    let body = Bytes::from_static(b"Subject: appended\r\n\r\nhello\r\n");
    let uid = mail
        .append(
            &alice,
            work.id,
            std::slice::from_ref(&flagged),
            1_700_000_000_000,
            body.clone(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(uid, 1);

    // STORE \Seen through another node is seen through the first.
    ring.mail[1]
        .numbered_folder(&alice, FolderId::INBOX)
        .await
        .unwrap();
    let seen = FlagName::parse("\\Seen").unwrap();
    ring.mail[1]
        .store_flags(
            &alice,
            FolderId::INBOX,
            &[(inbox_id, vec![seen.clone()], vec![])],
        )
        .await
        .unwrap()
        .unwrap();
    let inbox = mail.numbered_folder(&alice, FolderId::INBOX).await.unwrap();
    assert!(inbox.flags.is_set(inbox_id, &seen));

    // MOVE the INBOX message into Work: a new message there with its flags, a
    // tombstone in INBOX that POP3 sees.
    let moved = mail
        .copy_messages(&alice, FolderId::INBOX, work.id, &[inbox_id], true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].1, 2);
    let lock = ring.mail[1].lock_maildrop(&alice).await.unwrap();
    assert!(ring.mail[1].list(&lock).await.unwrap().is_empty());
    drop(lock);
    let state = ring.mail[1].numbered_folder(&alice, work.id).await.unwrap();
    let messages = state.messages();
    assert_eq!(messages.len(), 2);
    assert!(messages[1].flags.contains(&seen));
    let bodies = ring.mail[1]
        .folder_bodies(&alice, work.id, &[messages[0].id])
        .await
        .unwrap();
    assert_eq!(bodies, [Some(body)]);

    // The member that was down gets all of it by anti-entropy.
    ring.faults(2).down.store(false, Ordering::Release);
    antientropy::round(mail).await.unwrap();
    let member = &ring.mail[2];
    assert!(member.local_folder(&alice, work.id).await.unwrap() == state);
    let stored = member
        .local()
        .folder_body(&alice, work.id, messages[1].id)
        .await
        .unwrap();
    assert!(
        stored.is_some(),
        "the moved message's octets were not repaired"
    );
    let folders = member.local().folders(&alice).await.unwrap();
    assert_eq!(folders.find("Work").map(|view| view.id), Some(work.id));
    let digests: Vec<u64> = digests_everywhere(&ring, &alice).await;
    assert!(
        digests.iter().all(|digest| *digest == digests[0]),
        "{digests:?}"
    );

    // EXPUNGE in Work, RENAME and DELETE of the folder.
    ring.mail[2]
        .expunge(&alice, work.id, &[messages[0].id])
        .await
        .unwrap();
    let state = mail.numbered_folder(&alice, work.id).await.unwrap();
    assert_eq!(state.messages().len(), 1);
    mail.rename_folder(&alice, "Work", "Jobs")
        .await
        .unwrap()
        .unwrap();
    assert!(
        ring.mail[2]
            .folder_named(&alice, "Work")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        ring.mail[2]
            .folder_named(&alice, "Jobs")
            .await
            .unwrap()
            .map(|view| view.id),
        Some(work.id)
    );
    assert_eq!(
        mail.delete_folder(&alice, "INBOX").await.unwrap(),
        Err(Refusal::Cannot)
    );
    mail.delete_folder(&alice, "Jobs").await.unwrap().unwrap();
    assert!(mail.folder_named(&alice, "Jobs").await.unwrap().is_none());
}

async fn digests_everywhere(ring: &TestRing, address: &Address) -> Vec<u64> {
    let mut digests = Vec::new();
    for mail in &ring.mail {
        digests.push(mail.local().digest_of(address).await.unwrap());
    }
    digests
}

/// Goal: a write to a folder wakes the sessions of the nodes holding a replica,
/// whichever node wrote it (IDLE's local path). Method: watch INBOX on node 2,
/// deliver through node 0, wait for the watch to change against a deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_wakes_the_watchers_of_every_replica() {
    let ring = TestRing::new(3);
    let alice = address("idle@example.org");
    ring.mail[0]
        .create_account(&alice, "a long enough secret")
        .await
        .unwrap();
    let mut watch = ring.mail[2].watch_folder(&alice, FolderId::INBOX);
    let mut other = ring.mail[2].watch_folder(&alice, FolderId(5));
    deliver(&ring.mail[0], &alice, 1).await;
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("no wake-up within 5 s");
    let woken = tokio::time::timeout(Duration::from_millis(200), other.changed()).await;
    assert!(woken.is_err(), "another folder was woken");
}

/// Goal: IDLE across the ring: a node outside the replica set hears of a write
/// through the members it subscribed with. Method: four nodes, the set is the
/// first three; node 4 watches INBOX, and once its subscription reached the
/// members, a delivery through node 1 must wake it; after the watch is dropped,
/// the subscription is not renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_replica_set_is_notified() {
    let ring = TestRing::new(4);
    let alice = address("far@example.org");
    ring.mail[0]
        .create_account(&alice, "a long enough secret")
        .await
        .unwrap();
    let outsider = &ring.mail[3];
    let mut watch = outsider.watch_folder(&alice, FolderId::INBOX);
    let deadline = Instant::now() + Duration::from_secs(5);
    let n_subscribed = || {
        ring.cluster.replicas[..3]
            .iter()
            .filter(|replica| {
                replica
                    .local
                    .watchers()
                    .n_subscribers(&alice, FolderId::INBOX)
                    == 1
            })
            .count()
    };
    while n_subscribed() < 3 {
        assert!(
            Instant::now() < deadline,
            "the subscriptions did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    deliver(&ring.mail[0], &alice, 1).await;
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("the outsider was not notified within 5 s");
}

/// Goal: the conflict rule of docs/DESIGN.md §11 at work: after a partition in which both
/// sides numbered, no UID names two messages, none is reused, and the messages
/// concerned get new UIDs above every UID claimed. Method: six nodes; message 1 is
/// numbered everywhere; then nodes 1-3 and 4-6 each form a replica set of their
/// own (sloppy quorums), each side gets one new message and numbers it (both as
/// UID 2); after healing (one set again, anti-entropy), every replica resolves the
/// same map: UID 1 kept, UID 2 retired, the two messages renumbered 3 and 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_numbering_on_both_sides_heals_by_the_conflict_rule() {
    let ring = TestRing::new(6);
    let alice = address("split@example.org");
    let everyone = ring.cluster.nodes.clone();
    *ring.cluster.set.lock().unwrap() = everyone.clone();
    let first = deliver(&ring.mail[0], &alice, 1).await[0];
    ring.mail[0]
        .numbered_folder(&alice, FolderId::INBOX)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while uids_everywhere(&ring, &alice, FolderId::INBOX)
        .await
        .iter()
        .any(|uids| uids.get(&first) != Some(&1))
    {
        assert!(
            Instant::now() < deadline,
            "message 1's UID did not reach every node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    {
        let mut views = ring.cluster.views.lock().unwrap();
        for node in &everyone {
            let side = if node.id <= 3 {
                &everyone[..3]
            } else {
                &everyone[3..]
            };
            views.insert(node.id, side.to_vec());
        }
    }
    let left = deliver(&ring.mail[0], &alice, 1).await[0];
    let right = deliver(&ring.mail[3], &alice, 1).await[0];
    let seen_left = ring.mail[1]
        .numbered_folder(&alice, FolderId::INBOX)
        .await
        .unwrap()
        .uids
        .resolve()
        .uid_of;
    let seen_right = ring.mail[4]
        .numbered_folder(&alice, FolderId::INBOX)
        .await
        .unwrap()
        .uids
        .resolve()
        .uid_of;
    assert_eq!(
        (seen_left[&left], seen_right[&right]),
        (2, 2),
        "each side numbered"
    );

    ring.cluster.views.lock().unwrap().clear();
    for mail in &ring.mail {
        antientropy::round(mail).await.unwrap();
    }
    let healed = ring.mail[2]
        .numbered_folder(&alice, FolderId::INBOX)
        .await
        .unwrap()
        .uids
        .resolve();
    assert_eq!(healed.uid_of[&first], 1, "an uncontested UID stays");
    assert!(
        !healed.message_of.contains_key(&2),
        "UID 2 named two messages: retired"
    );
    let (mut renumbered, expected) = (
        vec![healed.uid_of[&left], healed.uid_of[&right]],
        vec![3, 4],
    );
    renumbered.sort();
    assert_eq!(renumbered, expected, "new UIDs above every UID claimed");
    for mail in &ring.mail {
        antientropy::round(mail).await.unwrap();
    }
    for uids in uids_everywhere(&ring, &alice, FolderId::INBOX).await {
        assert_eq!(uids, healed.uid_of, "replicas resolve differently");
    }
}
