use std::sync::Arc;

use cm_model::{Outbound, Version};
use cm_types::key_of_address;

use super::*;

fn address(text: &str) -> Address {
    Address::parse(text).unwrap()
}

fn message(address: &Address, id: u128, body: &[u8]) -> Write {
    Write::Message {
        key: key_of_address(address, 64),
        address: address.clone(),
        id: MessageId::from_u128(id),
        body: Bytes::copy_from_slice(body),
    }
}

#[test]
fn messages_and_tombstones_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let alice = address("alice@example.org");
    let key = key_of_address(&alice, 64);
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .apply(&[
                message(&alice, 1, b"one\r\n"),
                message(&alice, 2, b"two\r\n"),
            ])
            .unwrap();
        let tombstone = Write::Tombstone {
            key,
            address: alice.clone(),
            id: MessageId::from_u128(1),
            deleted_ms: 5,
        };
        store.apply(&[tombstone]).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let mailbox = store.mailbox(key, &alice).unwrap();
    assert_eq!(
        mailbox.visible().collect::<Vec<_>>(),
        vec![(MessageId::from_u128(2), 5)]
    );
    assert_eq!(
        store
            .body(key, &alice, MessageId::from_u128(2))
            .unwrap()
            .unwrap(),
        &b"two\r\n"[..]
    );
    assert_eq!(
        store.body(key, &alice, MessageId::from_u128(1)).unwrap(),
        None
    );
    assert_eq!(store.n_keys().unwrap(), 1);
}

#[test]
fn a_message_arriving_after_its_tombstone_stays_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bob = address("bob@example.org");
    let key = key_of_address(&bob, 64);
    let tombstone = Write::Tombstone {
        key,
        address: bob.clone(),
        id: MessageId::from_u128(9),
        deleted_ms: 1,
    };
    store
        .apply(&[tombstone, message(&bob, 9, b"late replica copy\r\n")])
        .unwrap();
    assert!(
        !store
            .mailbox(key, &bob)
            .unwrap()
            .is_visible(MessageId::from_u128(9))
    );
    assert_eq!(
        store.body(key, &bob, MessageId::from_u128(9)).unwrap(),
        None
    );
}

#[test]
fn accounts_merge_last_writer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let carol = address("carol@example.org");
    let key = key_of_address(&carol, 64);
    let newer = Account {
        address: carol.clone(),
        password_hash: "new".to_owned(),
        version: Version {
            wall_ms: 2,
            counter: 0,
            node: 1,
        },
        deleted: false,
    };
    let older = Account {
        password_hash: "old".to_owned(),
        version: Version {
            wall_ms: 1,
            ..newer.version
        },
        ..newer.clone()
    };
    store
        .apply(&[Write::Account {
            key,
            account: newer.clone(),
        }])
        .unwrap();
    store
        .apply(&[Write::Account {
            key,
            account: older,
        }])
        .unwrap();
    assert_eq!(store.account(key, &carol).unwrap(), Some(newer));
    assert_eq!(store.accounts().unwrap().len(), 1);
}

#[test]
fn refuses_a_newer_schema_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(
                SCHEMA_VERSION_KEY,
                (SCHEMA_VERSION + 1).to_be_bytes().as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
    }
    let error = Store::open(dir.path())
        .err()
        .expect("a newer schema must be refused");
    assert!(matches!(error, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1));
    assert!(error.to_string().contains(DATABASE_FILE), "{error}");
}

#[test]
fn refuses_a_file_that_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DATABASE_FILE), vec![0x5a; 64 * 1024]).unwrap();
    let error = Store::open(dir.path())
        .err()
        .expect("garbage must be refused");
    assert!(error.to_string().contains(DATABASE_FILE), "{error}");
}

#[test]
fn a_corrupted_body_is_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let dave = address("dave@example.org");
    let key = key_of_address(&dave, 64);
    store.apply(&[message(&dave, 3, b"original\r\n")]).unwrap();
    let txn = store.db.begin_write().unwrap();
    txn.open_table(BODIES)
        .unwrap()
        .insert((key, dave.as_str(), 3u128), b"tampered\r\n".as_slice())
        .unwrap();
    txn.commit().unwrap();
    assert!(matches!(
        store.body(key, &dave, MessageId::from_u128(3)),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn group_commit_acknowledges_every_request_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let committer = GroupCommitter::start(store.clone());
    let erin = address("erin@example.org");
    let (sender, receiver) = std::sync::mpsc::channel();
    let n_requests = 200u128;
    for id in 0..n_requests {
        let sender = sender.clone();
        committer.submit(vec![message(&erin, id, b"x\r\n")], move |outcome| {
            sender.send((id, outcome)).unwrap()
        });
    }
    let mut acknowledged: Vec<u128> = (0..n_requests)
        .map(|_| receiver.recv().unwrap())
        .map(|(id, outcome)| {
            outcome.unwrap();
            id
        })
        .collect();
    acknowledged.sort();
    assert_eq!(acknowledged, (0..n_requests).collect::<Vec<_>>());
    let mailbox = store.mailbox(key_of_address(&erin, 64), &erin).unwrap();
    assert_eq!(mailbox.received.len() as u128, n_requests);
}

#[test]
fn tombstones_are_collected_only_after_their_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fay = address("fay@example.org");
    let key = key_of_address(&fay, 64);
    let tombstone = |id: u128, deleted_ms| Write::Tombstone {
        key,
        address: fay.clone(),
        id: MessageId::from_u128(id),
        deleted_ms,
    };
    store
        .apply(&[
            message(&fay, 1, b"old\r\n"),
            message(&fay, 2, b"recent\r\n"),
            message(&fay, 3, b"kept\r\n"),
        ])
        .unwrap();
    store
        .apply(&[tombstone(1, 100), tombstone(2, 5_000)])
        .unwrap();
    assert_eq!(store.collect_tombstones(1_000, 16).unwrap(), 1);
    let mailbox = store.mailbox(key, &fay).unwrap();
    assert!(
        !mailbox.received.contains_key(&MessageId::from_u128(1))
            && !mailbox.tombstones.contains_key(&MessageId::from_u128(1))
    );
    assert!(
        mailbox.tombstones.contains_key(&MessageId::from_u128(2)),
        "inside the grace period"
    );
    assert_eq!(
        mailbox.visible().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![MessageId::from_u128(3)]
    );
    assert_eq!(store.collect_tombstones(1_000, 16).unwrap(), 0);
}

/// Goal: an outbound entry merges on every write, keeps its body until it is
/// removed, and is collected only after the grace period. Method: write the entry
/// with its body, then a settled copy without a body, then a removal.
#[test]
fn outbound_entries_merge_keep_their_body_until_removed_and_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = MessageId::from_u128(42);
    let key = cm_types::key_of_outbound(id.as_u128(), 64);
    let version = Version {
        wall_ms: 1,
        counter: 0,
        node: 1,
    };
    let entry = Outbound::new(
        id,
        "a@a.test".into(),
        ["b@b.test".to_owned()],
        1_000,
        version,
    );
    let write = |entry: &Outbound, body: Option<&'static [u8]>| Write::Outbound {
        key,
        entry: Box::new(entry.clone()),
        body: body.map(Bytes::from_static),
    };
    store.apply(&[write(&entry, Some(b"queued\r\n"))]).unwrap();
    let mut settled = entry.clone();
    settled
        .outcomes
        .insert("b@b.test".into(), cm_model::Outcome::Delivered);
    store.apply(&[write(&settled, Some(b"other\r\n"))]).unwrap();
    assert!(store.outbound(key, id).unwrap().unwrap().is_settled());
    assert_eq!(
        store.outbound_body(key, id).unwrap().unwrap(),
        &b"queued\r\n"[..],
        "the body is written once"
    );
    store.apply(&[write(&entry, None)]).unwrap();
    assert!(
        store.outbound(key, id).unwrap().unwrap().is_settled(),
        "an older copy undid an outcome"
    );

    let mut removed = entry.clone();
    removed.removed_ms = Some(5_000);
    store.apply(&[write(&removed, None)]).unwrap();
    assert_eq!(store.outbound_body(key, id).unwrap(), None);
    assert_eq!(
        store.collect_outbound(5_000, 10).unwrap(),
        0,
        "inside the grace"
    );
    assert_eq!(store.outbound_entries(10).unwrap().len(), 1);
    assert_eq!(store.collect_outbound(5_001, 10).unwrap(), 1);
    assert!(store.outbound_entries(10).unwrap().is_empty());
}
