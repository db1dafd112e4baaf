//! The mail service: the one interface through which SMTP, POP3 and the admin API
//! reach accounts and mailboxes ([`Mail`]).
//!
//! Today every key is stored on this node only (a one-node ring): [`Mail`] applies
//! writes to the local store through group commit and reads it back. Replication
//! (placement on the ring, write and read quorums, takeover, anti-entropy) plugs in
//! behind these same methods, so the protocol servers do not change when it lands.
//!
//! What this crate guarantees to its callers: a method returning `Ok` after a write
//! means the write is durable (fsynced); [`MailError::Unavailable`] and
//! [`MailError::Storage`] mean nothing was acknowledged and the client should retry.
//! It knows nothing of SMTP or POP3 syntax.

mod lease;

pub use lease::MaildropLock;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cm_model::{Account, HybridClock, Mailbox, MessageId, PasswordError};
use cm_store::{GroupCommitter, Store, StoreError, Write};
use cm_types::{Address, RingKey, key_of_address};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("no such account")]
    NoSuchAccount,
    #[error("account already exists")]
    AccountExists,
    #[error("maildrop is locked by another session")]
    InUse,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for MailError {
    fn from(error: StoreError) -> MailError {
        MailError::Storage(error.to_string())
    }
}

impl From<PasswordError> for MailError {
    fn from(error: PasswordError) -> MailError {
        match error {
            PasswordError::Hashing(reason) => MailError::Storage(reason),
            invalid => MailError::Invalid(invalid.to_string()),
        }
    }
}

/// A visible message of a maildrop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    pub id: MessageId,
    pub size: u64,
}

/// What the mail service needs to know about the node it runs on.
#[derive(Clone, Debug)]
pub struct MailConfig {
    /// This node's ring id; it tags the versions this node writes.
    pub node_id: u64,
    /// The identifier space; addresses hash into `[0, 2^bits)`.
    pub bits: u32,
    /// Lower-cased mail domains the ring serves.
    pub domains: Vec<String>,
}

/// The mail service. Cheap to clone; every clone shares one store.
#[derive(Clone)]
pub struct Mail {
    inner: Arc<Inner>,
}

struct Inner {
    config: MailConfig,
    store: Arc<Store>,
    committer: GroupCommitter,
    clock: HybridClock,
    leases: lease::LeaseTable,
    /// Successful logins, so that a mail client polling every minute does not pay an
    /// argon2 hash each time: address -> (account version, salted digest of the
    /// password). An entry is only trusted for the exact account version it was
    /// made from, so a password change or deletion invalidates it.
    verified: Mutex<HashMap<Address, (cm_model::Version, [u8; 32])>>,
    verified_salt: [u8; 32],
}

impl Mail {
    pub fn new(config: MailConfig, store: Arc<Store>) -> Mail {
        let committer = GroupCommitter::start(store.clone());
        let clock = HybridClock::new(config.node_id);
        Mail {
            inner: Arc::new(Inner {
                config,
                store,
                committer,
                clock,
                leases: lease::LeaseTable::default(),
                verified: Mutex::new(HashMap::new()),
                verified_salt: rand::random(),
            }),
        }
    }

    /// A one-node service on `dir`, serving `localhost` and `example.org`, for tests.
    pub fn open_for_tests(dir: &Path) -> Mail {
        let store = Arc::new(Store::open(dir).expect("opening a test store"));
        let config = MailConfig { node_id: 1, bits: 64, domains: vec!["localhost".into(), "example.org".into()] };
        Mail::new(config, store)
    }

    pub fn config(&self) -> &MailConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn serves_domain(&self, domain: &str) -> bool {
        let domain = domain.to_lowercase();
        self.inner.config.domains.iter().any(|served| *served == domain)
    }

    fn key(&self, address: &Address) -> RingKey {
        key_of_address(address, self.inner.config.bits)
    }

    async fn account(&self, address: &Address) -> Result<Option<Account>, MailError> {
        let (store, key, address) = (self.inner.store.clone(), self.key(address), address.clone());
        let account = blocking(move || store.account(key, &address)).await??;
        Ok(account.filter(|account| !account.deleted))
    }

    pub async fn account_exists(&self, address: &Address) -> Result<bool, MailError> {
        Ok(self.account(address).await?.is_some())
    }

    /// Whether `password` opens `address`. Unknown accounts and wrong passwords are
    /// both `Ok(false)`: callers must not tell them apart to the peer.
    pub async fn authenticate(&self, address: &Address, password: &[u8]) -> Result<bool, MailError> {
        let Some(account) = self.account(address).await? else {
            return Ok(false);
        };
        let digest = self.password_digest(password);
        let cached = self.inner.verified.lock().expect("cache mutex poisoned").get(address).copied();
        if cached == Some((account.version, digest)) {
            return Ok(true);
        }
        let password = password.to_vec();
        let version = account.version;
        let matches = blocking(move || account.verify(&password)).await?;
        if matches {
            self.inner.verified.lock().expect("cache mutex poisoned").insert(address.clone(), (version, digest));
        }
        Ok(matches)
    }

    fn password_digest(&self, password: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.inner.verified_salt);
        hasher.update(password);
        hasher.finalize().into()
    }

    /// Creates an account; [`MailError::AccountExists`] if a live one has the address.
    pub async fn create_account(&self, address: &Address, password: &str) -> Result<(), MailError> {
        if !self.serves_domain(address.domain()) {
            return Err(MailError::Invalid(format!("domain {} is not served by this ring", address.domain())));
        }
        if self.account_exists(address).await? {
            return Err(MailError::AccountExists);
        }
        self.write_account(address, password, false).await
    }

    pub async fn set_password(&self, address: &Address, password: &str) -> Result<(), MailError> {
        if !self.account_exists(address).await? {
            return Err(MailError::NoSuchAccount);
        }
        self.write_account(address, password, false).await
    }

    /// Deletes an account (a last-writer-wins tombstone). Its mailbox is kept.
    pub async fn delete_account(&self, address: &Address) -> Result<(), MailError> {
        let Some(account) = self.account(address).await? else {
            return Err(MailError::NoSuchAccount);
        };
        let version = self.inner.clock.tick(now_ms());
        let tombstone = Account { version, deleted: true, ..account };
        self.commit(vec![Write::Account { key: self.key(address), account: tombstone }]).await
    }

    async fn write_account(&self, address: &Address, password: &str, deleted: bool) -> Result<(), MailError> {
        let version = self.inner.clock.tick(now_ms());
        let (address_owned, password) = (address.clone(), password.to_owned());
        let mut account = blocking(move || Account::new(address_owned, &password, version)).await??;
        account.deleted = deleted;
        self.commit(vec![Write::Account { key: self.key(address), account }]).await
    }

    /// Live accounts, sorted by address.
    pub async fn list_accounts(&self) -> Result<Vec<Address>, MailError> {
        let store = self.inner.store.clone();
        let accounts = blocking(move || store.accounts()).await??;
        let mut addresses: Vec<Address> =
            accounts.into_iter().filter(|account| !account.deleted).map(|account| account.address).collect();
        addresses.sort();
        Ok(addresses)
    }

    /// Stores one copy of `message` per recipient, each under its own id, and
    /// returns once all of them are durable.
    pub async fn deliver(&self, recipients: &[Address], message: Bytes) -> Result<Vec<MessageId>, MailError> {
        let arrival_ms = now_ms();
        let mut ids = Vec::with_capacity(recipients.len());
        let mut writes = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            let id = MessageId::generate(arrival_ms);
            ids.push(id);
            writes.push(Write::Message {
                key: self.key(recipient),
                address: recipient.clone(),
                id,
                body: message.to_vec(),
            });
        }
        self.commit(writes).await?;
        Ok(ids)
    }

    /// Takes the maildrop lock of `address` for one POP3 session.
    pub async fn lock_maildrop(&self, address: &Address) -> Result<MaildropLock, MailError> {
        self.inner.leases.acquire(address, self.key(address))
    }

    /// Visible messages of the locked maildrop, oldest first.
    pub async fn list(&self, lock: &MaildropLock) -> Result<Vec<MessageInfo>, MailError> {
        let mailbox = self.mailbox(lock).await?;
        Ok(mailbox.visible().map(|(id, size)| MessageInfo { id, size }).collect())
    }

    async fn mailbox(&self, lock: &MaildropLock) -> Result<Mailbox, MailError> {
        let (store, key, address) = (self.inner.store.clone(), lock.key(), lock.address().clone());
        Ok(blocking(move || store.mailbox(key, &address)).await??)
    }

    /// The message's octets, or `None` if it is not (or no longer) in the maildrop.
    pub async fn retrieve(&self, lock: &MaildropLock, id: MessageId) -> Result<Option<Bytes>, MailError> {
        let (store, key, address) = (self.inner.store.clone(), lock.key(), lock.address().clone());
        let body = blocking(move || store.body(key, &address, id)).await??;
        Ok(body.map(Bytes::from))
    }

    /// Deletes messages of the locked maildrop as durable tombstones. On `Err`
    /// nothing was removed.
    pub async fn delete(&self, lock: &MaildropLock, ids: &[MessageId]) -> Result<(), MailError> {
        if !lock.is_held() {
            return Err(MailError::Unavailable("the maildrop lock was lost".to_owned()));
        }
        let deleted_ms = now_ms();
        let writes = ids
            .iter()
            .map(|id| Write::Tombstone { key: lock.key(), address: lock.address().clone(), id: *id, deleted_ms })
            .collect();
        self.commit(writes).await
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<(), MailError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.inner.committer.submit(writes, move |outcome| {
            let _ = sender.send(outcome);
        });
        match receiver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(MailError::Storage(reason)),
            Err(_) => Err(MailError::Storage("the commit thread stopped".to_owned())),
        }
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, MailError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| MailError::Storage(format!("worker failed: {error}")))
}

/// Milliseconds since the Unix epoch, the wall-time input of the hybrid clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests;
