//! Quorum writes and reads, deletions and maildrop leases through in-memory members.

use super::*;

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
