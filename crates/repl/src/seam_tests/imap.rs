//! IMAP's folders, flags, UIDs and IDLE wake-ups through in-memory members.

use super::*;

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
