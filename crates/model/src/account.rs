//! Accounts: a last-writer-wins register holding an argon2id password hash.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use cm_types::Address;
use cm_types::limits::PASSWORD_BYTES_MAX;

use crate::Version;

/// One account as stored on every replica of its ring key.
///
/// Deleting an account writes a newer version with `deleted` set instead of removing
/// the record, so that a replica that missed the deletion cannot bring it back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Account {
    pub address: Address,
    /// A PHC string (`$argon2id$...`); the password itself is never stored.
    pub password_hash: String,
    pub version: Version,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("password is empty")]
    Empty,
    #[error("password is longer than {PASSWORD_BYTES_MAX} bytes")]
    TooLong,
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

impl Account {
    pub fn new(
        address: Address,
        password: &str,
        version: Version,
    ) -> Result<Account, PasswordError> {
        Ok(Account {
            address,
            password_hash: hash_password(password)?,
            version,
            deleted: false,
        })
    }

    /// Whether `password` matches. A deleted account matches nothing.
    pub fn verify(&self, password: &[u8]) -> bool {
        if self.deleted || password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
            return false;
        }
        let Ok(hash) = PasswordHash::new(&self.password_hash) else {
            return false;
        };
        Argon2::default().verify_password(password, &hash).is_ok()
    }

    /// The last-writer-wins merge: the higher version wins. Versions carry the
    /// writer's node id, so two different writes never tie; the content comparison
    /// only keeps the merge commutative should a tie ever be forged.
    pub fn merge(self, other: Account) -> Account {
        let key = |account: &Account| {
            (
                account.version,
                account.deleted,
                account.password_hash.clone(),
            )
        };
        if key(&other) > key(&self) {
            other
        } else {
            self
        }
    }
}

/// Hashes with argon2id and the crate's default parameters (19 MiB, 2 passes), the
/// OWASP recommendation at the time of writing.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(PasswordError::TooLong);
    }
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|error| PasswordError::Hashing(error.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| PasswordError::Hashing(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version(wall_ms: u64, node: u64) -> Version {
        Version {
            wall_ms,
            counter: 0,
            node,
        }
    }

    #[test]
    fn verifies_only_the_right_password() {
        let address = Address::parse("alice@example.org").unwrap();
        let account = Account::new(address, "correct horse", version(1, 1)).unwrap();
        assert!(account.password_hash.starts_with("$argon2id$"));
        assert!(!account.password_hash.contains("correct horse"));
        assert!(account.verify(b"correct horse"));
        assert!(!account.verify(b"correct horse "));
        assert!(!account.verify(b""));
        let deleted = Account {
            deleted: true,
            ..account
        };
        assert!(!deleted.verify(b"correct horse"));
    }

    #[test]
    fn refuses_empty_and_huge_passwords() {
        assert_eq!(hash_password(""), Err(PasswordError::Empty));
        assert_eq!(
            hash_password(&"x".repeat(PASSWORD_BYTES_MAX + 1)),
            Err(PasswordError::TooLong)
        );
    }

    fn account() -> impl Strategy<Value = Account> {
        // Hashing is slow, so the generated "hashes" are short fake strings: merge
        // never looks inside them.
        (0u64..4, 0u64..3, any::<bool>(), "[a-c]{1,2}").prop_map(
            |(wall_ms, node, deleted, hash)| Account {
                address: Address::parse("a@example.org").unwrap(),
                password_hash: hash,
                version: version(wall_ms, node),
                deleted,
            },
        )
    }

    proptest! {
        #[test]
        fn lww_merge_is_commutative_associative_idempotent(a in account(), b in account(), c in account()) {
            prop_assert_eq!(a.clone().merge(b.clone()), b.clone().merge(a.clone()));
            prop_assert_eq!(a.clone().merge(b.clone()).merge(c.clone()), a.clone().merge(b.clone().merge(c.clone())));
            prop_assert_eq!(a.clone().merge(a.clone()), a.clone());
            let newest = a.clone().merge(b.clone());
            prop_assert!(newest.version >= a.version && newest.version >= b.version);
        }
    }
}
