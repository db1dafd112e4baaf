//! Replica data is checked on arrival like client input (docs/DESIGN.md §10): a member of
//! the cluster may be buggy, have a skewed clock or be compromised, and what it writes
//! would otherwise spread to every replica by anti-entropy.
//!
//! The gRPC decoding limit (`crate::MESSAGE_BYTES_MAX_ON_WIRE`) bounds a whole batch
//! before any of it is read; these checks bound what is inside.

use cm_model::check_password_hash;
use cm_store::Write;
use tonic::{Request, Status};

use crate::MailError;

/// How far in the future an account version may lie, by the receiver's clock. Nodes
/// keep their clocks within seconds of each other (NTP); a version further ahead would
/// win every later change of that account until the clocks caught up with it.
pub const VERSION_FUTURE_MS_MAX: u64 = 10 * 60 * 1000;
/// How far in the future a tombstone's deletion time may lie: it decides when the
/// tombstone is collected, so a far-future one would never be.
pub const TOMBSTONE_FUTURE_MS_MAX: u64 = VERSION_FUTURE_MS_MAX;
/// A stored message body may exceed the SMTP limit by the trace headers the
/// receiving node prepends (`Received:`, `Return-Path:`).
pub const STORED_BODY_BYTES_MAX: usize = cm_types::limits::MESSAGE_BYTES_MAX + 64 * 1024;

/// Checks every write of a batch from a peer; the first one out of bounds refuses the
/// whole batch, so a batch is applied entirely or not at all.
pub fn check_writes(writes: &[Write], now_ms: u64) -> Result<(), MailError> {
    let refuse = |reason: String| {
        cm_types::metrics::REPLICA_WRITES_REFUSED.increment();
        Err(MailError::Invalid(reason))
    };
    for write in writes {
        match write {
            Write::Account { account, .. } => {
                if account.version.wall_ms > now_ms.saturating_add(VERSION_FUTURE_MS_MAX) {
                    return refuse(format!(
                        "the account version of {} lies {} ms in the future",
                        account.address,
                        account.version.wall_ms - now_ms
                    ));
                }
                if let Err(error) = check_password_hash(&account.password_hash) {
                    return refuse(format!("account {}: {error}", account.address));
                }
            }
            Write::Message { address, body, .. } => {
                if body.len() > STORED_BODY_BYTES_MAX {
                    return refuse(format!(
                        "a message of {address} has {} bytes, over the size limit",
                        body.len()
                    ));
                }
            }
            Write::Tombstone {
                address,
                deleted_ms,
                ..
            } => {
                if *deleted_ms > now_ms.saturating_add(TOMBSTONE_FUTURE_MS_MAX) {
                    return refuse(format!(
                        "a tombstone of {address} was deleted {} ms in the future",
                        deleted_ms - now_ms
                    ));
                }
            }
            Write::Outbound { entry, body, .. } => {
                // Counts and texts were bounded when the record was decoded
                // (`convert::outbound_from_pb`); what is left is time.
                if entry.next_attempt.0.wall_ms > now_ms.saturating_add(VERSION_FUTURE_MS_MAX)
                    || entry.removed_ms.unwrap_or(0)
                        > now_ms.saturating_add(TOMBSTONE_FUTURE_MS_MAX)
                {
                    return refuse(format!("outbound entry {} lies in the future", entry.id));
                }
                if body
                    .as_ref()
                    .is_some_and(|body| body.len() > STORED_BODY_BYTES_MAX)
                {
                    return refuse(format!(
                        "outbound entry {} is over the size limit",
                        entry.id
                    ));
                }
            }
            Write::Folders {
                address, folders, ..
            } => {
                // Sizes and counts were bounded when the records were decoded
                // (`Folders::decode`); a version far ahead would win every later
                // rename or deletion.
                let version_max = now_ms.saturating_add(VERSION_FUTURE_MS_MAX);
                let ahead = folders.records.values().any(|record| {
                    [
                        record.created,
                        record.name.version,
                        record.subscribed.version,
                    ]
                    .into_iter()
                    .chain(record.deleted)
                    .any(|version| version.wall_ms > version_max)
                });
                if ahead {
                    return refuse(format!("a folder record of {address} lies in the future"));
                }
            }
            Write::Folder {
                address,
                delta,
                bodies,
                ..
            } => {
                let version_max = now_ms.saturating_add(VERSION_FUTURE_MS_MAX);
                let tombstone_max = now_ms.saturating_add(TOMBSTONE_FUTURE_MS_MAX);
                let flag_ahead = delta
                    .flags
                    .registers
                    .values()
                    .any(|register| register.version.wall_ms > version_max);
                let tombstone_ahead = delta
                    .mailbox
                    .tombstones
                    .values()
                    .any(|deleted_ms| *deleted_ms > tombstone_max);
                if flag_ahead || tombstone_ahead {
                    return refuse(format!("a folder write of {address} lies in the future"));
                }
                for (id, body) in bodies {
                    if delta.mailbox.received.get(id) != Some(&(body.len() as u64))
                        || body.len() > STORED_BODY_BYTES_MAX
                    {
                        return refuse(format!(
                            "folder message {id} of {address} is over the size limit or not the size it claims"
                        ));
                    }
                }
            }
            Write::Meta { .. } => {
                return refuse("node settings are never replicated".to_owned());
            }
        }
    }
    Ok(())
}

/// Refuses a request that names a ring address (hand-off's requester) unless the
/// peer's certificate covers it. Without peer certificates the ring port runs in
/// plaintext (the server demands a certificate whenever cluster TLS is on), and
/// there is nothing to check against.
pub fn check_claimed_addr<T>(request: &Request<T>, addr: &str) -> Result<(), Status> {
    match request.peer_certs() {
        None => Ok(()),
        Some(certs)
            if certs
                .first()
                .is_some_and(|leaf| cm_tls::cluster::covers(leaf, addr)) =>
        {
            Ok(())
        }
        Some(_) => {
            tracing::warn!(
                claimed = addr,
                "refused a hand-off to a ring address the peer's certificate does not cover"
            );
            Err(Status::permission_denied(format!(
                "the peer's certificate does not cover the ring address {addr} it claims"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_model::{Account, Version};
    use cm_types::Address;

    const NOW_MS: u64 = 1_800_000_000_000;

    fn account(wall_ms: u64, password_hash: String) -> Write {
        Write::Account {
            key: 1,
            account: Account {
                address: Address::parse("alice@example.org").unwrap(),
                password_hash,
                version: Version {
                    wall_ms,
                    counter: 0,
                    node: 9,
                },
                deleted: false,
            },
        }
    }

    fn real_hash() -> String {
        cm_model::account::hash_password("pw").unwrap()
    }

    /// Goal: a forged account record is refused before it is stored or hashed.
    /// Method: batches with one bad record among good ones.
    #[test]
    fn forged_accounts_are_refused() {
        let good = account(NOW_MS, real_hash());
        assert_eq!(
            check_writes(std::slice::from_ref(&good), NOW_MS).map_err(|_| ()),
            Ok(())
        );
        let skewed = account(NOW_MS + VERSION_FUTURE_MS_MAX, real_hash());
        assert!(check_writes(&[skewed], NOW_MS).is_ok(), "at the bound");
        for bad in [
            account(NOW_MS + VERSION_FUTURE_MS_MAX + 1, real_hash()),
            account(u64::MAX, real_hash()),
            account(NOW_MS, real_hash().replace("m=19456", "m=4294967295")),
            account(NOW_MS, "$2b$12$notargon".to_owned()),
        ] {
            let batch = [good.clone(), bad];
            assert!(
                matches!(check_writes(&batch, NOW_MS), Err(MailError::Invalid(_))),
                "{batch:?}"
            );
        }
    }

    #[test]
    fn oversized_bodies_and_future_tombstones_are_refused() {
        let address = Address::parse("bob@example.org").unwrap();
        let id = cm_model::MessageId::from_u128(7);
        let message = |n_bytes: usize| Write::Message {
            key: 1,
            address: address.clone(),
            id,
            body: bytes::Bytes::from(vec![b'x'; n_bytes]),
        };
        let tombstone = |deleted_ms: u64| Write::Tombstone {
            key: 1,
            address: address.clone(),
            id,
            deleted_ms,
        };
        assert!(check_writes(&[message(STORED_BODY_BYTES_MAX), tombstone(NOW_MS)], NOW_MS).is_ok());
        assert!(check_writes(&[message(STORED_BODY_BYTES_MAX + 1)], NOW_MS).is_err());
        assert!(check_writes(&[tombstone(u64::MAX)], NOW_MS).is_err());
        let meta = Write::Meta {
            name: "node.id".to_owned(),
            value: vec![0; 8],
        };
        assert!(check_writes(&[meta], NOW_MS).is_err());
    }

    /// Goal: forged account records sent through the real `Apply` RPC change nothing
    /// and panic nothing, and a later password change still wins. Method: a one-node
    /// service on loopback; an account; `Apply` batches with a version near `u64::MAX`
    /// and with an argon2 hash of absurd cost (the rest of the record genuine); then
    /// the stored record, a login, and a password change.
    #[tokio::test]
    async fn forged_apply_calls_change_nothing() {
        use crate::Mail;
        use crate::convert::writes_to_pb;
        use crate::server::ReplicaService;

        let dir = tempfile::tempdir().unwrap();
        let mail = Mail::open_for_tests(dir.path());
        let alice = Address::parse("alice@example.org").unwrap();
        mail.create_account(&alice, "secret").await.unwrap();
        let before = mail.local().account(&alice).await.unwrap().unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cell = std::sync::Arc::new(std::sync::OnceLock::new());
        assert!(cell.set(mail.clone()).is_ok());
        let service = ReplicaService::server(mail.local().clone(), cell);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut client =
            crate::pb::replica_client::ReplicaClient::connect(format!("http://{addr}"))
                .await
                .unwrap();

        let far_future = Account {
            version: Version {
                wall_ms: u64::MAX,
                counter: u32::MAX,
                node: u64::MAX,
            },
            password_hash: cm_model::account::hash_password("mallory").unwrap(),
            ..before.clone()
        };
        let (_, params_and_rest) = before.password_hash.split_once("$m=").unwrap();
        let (_, rest) = params_and_rest.split_once('$').unwrap();
        let absurd_cost = Account {
            version: Version {
                wall_ms: crate::now_ms(),
                counter: 0,
                node: 2,
            },
            password_hash: format!("$argon2id$v=19$m=4294967295,t=4294967295,p=1${rest}"),
            ..before.clone()
        };
        for forged in [far_future, absurd_cost] {
            let key = mail.key(&alice);
            let batch = writes_to_pb(&[Write::Account {
                key,
                account: forged,
            }]);
            let outcome = client.apply(batch).await;
            assert!(outcome.is_err(), "the forged write was accepted");
            let stored = mail.local().account(&alice).await.unwrap().unwrap();
            assert_eq!(stored, before, "the stored account changed");
        }
        assert!(mail.authenticate(&alice, b"secret").await.unwrap());
        mail.set_password(&alice, "changed").await.unwrap();
        assert!(mail.authenticate(&alice, b"changed").await.unwrap());
        assert!(!mail.authenticate(&alice, b"secret").await.unwrap());
        server.abort();
    }

    /// Calls every method of the `Replica` service once with harmless requests on
    /// `channel`; returns the methods that were answered.
    async fn answered_methods(channel: tonic::transport::Channel) -> Vec<&'static str> {
        use crate::pb;
        let mut client = pb::replica_client::ReplicaClient::new(channel);
        let address = || "alice@example.org".to_owned();
        let lease = || pb::LeaseRequest {
            address: address(),
            lease_id: 7,
            ttl_ms: 60_000,
            ..Default::default()
        };
        let mut answered = Vec::new();
        let mut note = |name: &'static str, ok: bool| {
            if ok {
                answered.push(name);
            }
        };
        note(
            "Apply",
            client.apply(pb::WriteBatch::default()).await.is_ok(),
        );
        let read = || pb::AddressRequest {
            address: address(),
            repair: true,
        };
        note("ReadAccount", client.read_account(read()).await.is_ok());
        note("ReadMailbox", client.read_mailbox(read()).await.is_ok());
        let body = pb::BodyRequest {
            address: address(),
            id: vec![0; 16],
            ..Default::default()
        };
        note("ReadBody", client.read_body(body).await.is_ok());
        note("AcquireLease", client.acquire_lease(lease()).await.is_ok());
        note("ReleaseLease", client.release_lease(lease()).await.is_ok());
        let digests = pb::DigestRequest::default();
        note(
            "CompareDigests",
            client.compare_digests(digests).await.is_ok(),
        );
        note(
            "ListAccounts",
            client.list_accounts(pb::Empty {}).await.is_ok(),
        );
        let handoff = pb::HandoffRequest {
            id: 1,
            addr: "127.0.0.1:1".to_owned(),
        };
        note("Handoff", client.handoff(handoff).await.is_ok());
        answered
    }

    /// Goal: no method of the replica service answers a client without a
    /// certificate of the cluster CA. Method: the service behind the ring port's
    /// mutual TLS; every method called in plaintext, over TLS without a client
    /// certificate, with a certificate of another CA (none answered; then the
    /// account and the lease table are as before), and as a member (the positive
    /// control: all but the hand-off to an address its certificate does not cover).
    #[tokio::test]
    async fn every_replica_method_needs_a_cluster_certificate() {
        use crate::Mail;
        use crate::server::ReplicaService;
        use cm_tls::cluster;
        use tonic::transport::{ClientTlsConfig, Endpoint};

        let dir = tempfile::tempdir().unwrap();
        let mail = Mail::open_for_tests(&dir.path().join("data"));
        let alice = Address::parse("alice@example.org").unwrap();
        mail.create_account(&alice, "secret").await.unwrap();
        let before = mail.local().account(&alice).await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let certs = |ca: &str, node_addr: &str, out: &str| {
            let ca_dir = dir.path().join(ca);
            if !ca_dir.join(cluster::CA_KEY_FILE).exists() {
                cluster::create_ca(&ca_dir).unwrap();
            }
            cluster::create_node_cert(&ca_dir, node_addr, &dir.path().join(out)).unwrap();
            (ca_dir, dir.path().join(out))
        };
        let load = |ca_dir: &std::path::Path, cert_dir: &std::path::Path| {
            cm_net::ClusterTls::load(
                &ca_dir.join(cluster::CA_CERT_FILE),
                &cert_dir.join(cluster::NODE_CERT_FILE),
                &cert_dir.join(cluster::NODE_KEY_FILE),
            )
            .unwrap()
        };
        let (ca, server_dir) = certs("ca", &addr, "server");
        let (_, member_dir) = certs("ca", "127.0.0.1:2", "member");
        let (_, stranger_dir) = certs("other-ca", "127.0.0.1:2", "stranger");
        let server_tls = load(&ca, &server_dir);
        let cell = std::sync::Arc::new(std::sync::OnceLock::new());
        assert!(cell.set(mail.clone()).is_ok());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(server_tls.server_config())
                .unwrap()
                .add_service(ReplicaService::server(mail.local().clone(), cell))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );

        // Every client trusts the server (the CA is the real one), so only the
        // server's checks can refuse it.
        let tls_channel = |identity: Option<&std::path::Path>| {
            let verifier = server_tls.verifier_for(&addr);
            let config = match identity {
                Some(cert_dir) => load(&ca, cert_dir).client_config(),
                None => ClientTlsConfig::new(),
            };
            Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config_with_verifier(config, verifier)
                .unwrap()
                .connect_lazy()
        };
        let plaintext = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        assert_eq!(answered_methods(plaintext).await, Vec::<&str>::new());
        assert_eq!(
            answered_methods(tls_channel(None)).await,
            Vec::<&str>::new()
        );
        assert_eq!(
            answered_methods(tls_channel(Some(&stranger_dir))).await,
            Vec::<&str>::new()
        );
        assert_eq!(mail.local().account(&alice).await.unwrap(), before);
        assert!(mail.local().leases.acquire(
            &alice,
            crate::lease::LeaseScope::Maildrop,
            99,
            std::time::Duration::from_secs(1)
        ));
        mail.local()
            .leases
            .release(&alice, crate::lease::LeaseScope::Maildrop, 99);

        assert_eq!(
            answered_methods(tls_channel(Some(&member_dir))).await,
            [
                "Apply",
                "ReadAccount",
                "ReadMailbox",
                "ReadBody",
                "AcquireLease",
                "ReleaseLease",
                "CompareDigests",
                "ListAccounts"
            ]
        );
        server.abort();
    }

    /// Goal: IMAP folder writes from a peer are bounded in time and size like the
    /// rest. Method: a flag version and a folder record from the far future, and
    /// a body whose length is not the size the folder records, are each refused.
    #[test]
    fn forged_folder_writes_are_refused() {
        let address = Address::parse("carol@example.org").unwrap();
        let id = cm_model::MessageId::from_u128(7);
        let version = |wall_ms| Version {
            wall_ms,
            counter: 0,
            node: 9,
        };
        let folder = |delta: cm_model::FolderState,
                      bodies: Vec<(cm_model::MessageId, bytes::Bytes)>| {
            Write::Folder {
                key: 1,
                address: address.clone(),
                folder: cm_model::FolderId(5),
                delta: Box::new(delta),
                bodies,
            }
        };
        let seen = cm_model::FlagName::parse("\\Seen").unwrap();
        let flagged = |wall_ms| cm_model::FolderState {
            flags: cm_model::Flags::default()
                .write(id, std::slice::from_ref(&seen), true, version(wall_ms))
                .unwrap(),
            ..Default::default()
        };
        assert!(check_writes(&[folder(flagged(NOW_MS), vec![])], NOW_MS).is_ok());
        assert!(check_writes(&[folder(flagged(u64::MAX), vec![])], NOW_MS).is_err());
        let mut received = cm_model::FolderState::default();
        received.mailbox.received.insert(id, 5);
        let body = bytes::Bytes::from_static(b"12345");
        assert!(check_writes(&[folder(received.clone(), vec![(id, body)])], NOW_MS).is_ok());
        let longer = bytes::Bytes::from_static(b"123456");
        assert!(check_writes(&[folder(received, vec![(id, longer)])], NOW_MS).is_err());
        let records = cm_model::Folders::default()
            .create("Later", cm_model::FolderId(5), version(u64::MAX / 2))
            .unwrap();
        let write = Write::Folders {
            key: 1,
            address: address.clone(),
            folders: Box::new(records),
        };
        assert!(check_writes(&[write], NOW_MS).is_err());
    }
}
