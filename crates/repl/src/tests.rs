use bytes::Bytes;

use super::*;

fn address(text: &str) -> Address {
    Address::parse(text).unwrap()
}

#[tokio::test]
async fn delivered_mail_is_listed_retrieved_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::open_for_tests(dir.path());
    let (alice, bob) = (address("alice@example.org"), address("bob@localhost"));
    let ids = mail
        .deliver(
            &[alice.clone(), bob.clone()],
            Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n"),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "every recipient's copy has its own id");

    let lock = mail.lock_maildrop(&alice).await.unwrap();
    let listing = mail.list(&lock).await.unwrap();
    assert_eq!(
        listing,
        vec![MessageInfo {
            id: ids[0],
            size: 21
        }]
    );
    assert_eq!(
        mail.retrieve(&lock, ids[0]).await.unwrap().unwrap(),
        &b"Subject: hi\r\n\r\nbody\r\n"[..]
    );
    mail.delete(&lock, &[ids[0]]).await.unwrap();
    assert!(mail.list(&lock).await.unwrap().is_empty());
    assert_eq!(mail.retrieve(&lock, ids[0]).await.unwrap(), None);
}

#[tokio::test]
async fn a_maildrop_has_one_lock_holder_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::open_for_tests(dir.path());
    let alice = address("alice@example.org");
    let first = mail.lock_maildrop(&alice).await.unwrap();
    assert!(matches!(
        mail.lock_maildrop(&alice).await,
        Err(MailError::InUse)
    ));
    assert!(
        mail.lock_maildrop(&address("bob@example.org"))
            .await
            .is_ok()
    );
    drop(first);
    assert!(mail.lock_maildrop(&alice).await.is_ok());
}

#[tokio::test]
async fn accounts_are_created_verified_changed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::open_for_tests(dir.path());
    let carol = address("carol@example.org");
    assert!(!mail.authenticate(&carol, b"pw").await.unwrap());
    mail.create_account(&carol, "first password").await.unwrap();
    assert!(matches!(
        mail.create_account(&carol, "again").await,
        Err(MailError::AccountExists)
    ));
    assert!(mail.authenticate(&carol, b"first password").await.unwrap());
    assert!(
        mail.authenticate(&carol, b"first password").await.unwrap(),
        "cached login"
    );
    assert!(!mail.authenticate(&carol, b"wrong").await.unwrap());

    mail.set_password(&carol, "second password").await.unwrap();
    assert!(
        !mail.authenticate(&carol, b"first password").await.unwrap(),
        "the cache must not outlive a change"
    );
    assert!(mail.authenticate(&carol, b"second password").await.unwrap());
    assert_eq!(mail.list_accounts().await.unwrap(), vec![carol.clone()]);

    mail.delete_account(&carol).await.unwrap();
    assert!(!mail.authenticate(&carol, b"second password").await.unwrap());
    assert!(mail.list_accounts().await.unwrap().is_empty());
    assert!(matches!(
        mail.delete_account(&carol).await,
        Err(MailError::NoSuchAccount)
    ));
    mail.create_account(&carol, "reborn").await.unwrap();
    assert!(mail.authenticate(&carol, b"reborn").await.unwrap());
}

#[tokio::test]
async fn refuses_accounts_outside_the_served_domains() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::open_for_tests(dir.path());
    let outsider = address("eve@elsewhere.test");
    assert!(matches!(
        mail.create_account(&outsider, "pw").await,
        Err(MailError::Invalid(_))
    ));
    assert!(mail.serves_domain("Example.ORG"));
}
