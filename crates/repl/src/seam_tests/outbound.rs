//! The outbound queue's entries through in-memory members.

use super::*;

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
