//! Accounts: last-writer-wins records read from a read quorum and written to a
//! write quorum; password checks with a cache of recent successful logins.

use std::collections::BTreeMap;

use cm_model::Account;
use cm_store::Write;
use cm_types::Address;
use sha2::{Digest, Sha256};

use crate::quorum::Fanout;
use crate::replica::ReadFor;
use crate::{Mail, MailError, local, now_ms};

impl Mail {
    /// The merged account record (deleted ones included) from a read quorum.
    async fn read_account(&self, address: &Address) -> Result<Option<Account>, MailError> {
        let set = self.replica_set(self.key(address)).await?;
        let target = address.clone();
        let answers = self
            .quorum(set, "read account", Fanout::Needed, move |mail, node| {
                let address = target.clone();
                async move { mail.member(&node).account(&address, ReadFor::Client).await }
            })
            .await?;
        let merged = answers.into_iter().flatten().reduce(Account::merge);
        if let Some(account) = &merged {
            self.inner.clock.observe(account.version);
        }
        Ok(merged)
    }

    /// The live account of `address`, if any.
    async fn account(&self, address: &Address) -> Result<Option<Account>, MailError> {
        Ok(self
            .read_account(address)
            .await?
            .filter(|account| !account.deleted))
    }

    pub async fn account_exists(&self, address: &Address) -> Result<bool, MailError> {
        Ok(self.account(address).await?.is_some())
    }

    /// Whether `password` opens `address`. Unknown accounts and wrong passwords are
    /// both `Ok(false)`: callers must not tell them apart to the peer.
    pub async fn authenticate(
        &self,
        address: &Address,
        password: &[u8],
    ) -> Result<bool, MailError> {
        let Some(account) = self.account(address).await? else {
            return Ok(false);
        };
        let digest = self.password_digest(password);
        let cached = self
            .inner
            .verified
            .lock()
            .expect("cache mutex poisoned")
            .get(address)
            .copied();
        if cached == Some((account.version, digest)) {
            return Ok(true);
        }
        let password = password.to_vec();
        let version = account.version;
        let matches = local::blocking(move || account.verify(&password)).await?;
        if matches {
            self.inner
                .verified
                .lock()
                .expect("cache mutex poisoned")
                .insert(address.clone(), (version, digest));
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
            return Err(MailError::Invalid(format!(
                "domain {} is not served by this ring",
                address.domain()
            )));
        }
        if self.account_exists(address).await? {
            return Err(MailError::AccountExists);
        }
        self.write_account(address, password).await
    }

    pub async fn set_password(&self, address: &Address, password: &str) -> Result<(), MailError> {
        if !self.account_exists(address).await? {
            return Err(MailError::NoSuchAccount);
        }
        self.write_account(address, password).await
    }

    /// Deletes an account (a last-writer-wins tombstone). Its mailbox is kept.
    pub async fn delete_account(&self, address: &Address) -> Result<(), MailError> {
        let Some(account) = self.account(address).await? else {
            return Err(MailError::NoSuchAccount);
        };
        let version = self.inner.clock.tick(now_ms());
        let tombstone = Account {
            version,
            deleted: true,
            ..account
        };
        self.write_account_record(tombstone).await
    }

    async fn write_account(&self, address: &Address, password: &str) -> Result<(), MailError> {
        let version = self.inner.clock.tick(now_ms());
        let (address, password) = (address.clone(), password.to_owned());
        let account = local::blocking(move || Account::new(address, &password, version)).await??;
        self.write_account_record(account).await
    }

    async fn write_account_record(&self, account: Account) -> Result<(), MailError> {
        let key = self.key(&account.address);
        self.write_quorum(key, vec![Write::Account { key, account }])
            .await
    }

    /// Live accounts of the whole ring, sorted by address. Walks the ring and merges
    /// every node's records; nodes that do not answer are skipped.
    pub async fn list_accounts(&self) -> Result<Vec<Address>, MailError> {
        let mut merged: BTreeMap<Address, Account> = BTreeMap::new();
        for node in self.inner.members.cluster().await {
            let accounts = match self.member(&node).accounts().await {
                Ok(accounts) => accounts,
                Err(error) => {
                    tracing::warn!(node = %node.addr, %error, "skipping a node while listing accounts");
                    continue;
                }
            };
            for account in accounts {
                let merged_account = match merged.remove(&account.address) {
                    Some(existing) => existing.merge(account),
                    None => account,
                };
                merged.insert(merged_account.address.clone(), merged_account);
            }
        }
        Ok(merged
            .into_values()
            .filter(|account| !account.deleted)
            .map(|account| account.address)
            .collect())
    }
}
