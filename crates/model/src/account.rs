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

/// The costs a stored argon2id hash may ask for. Hashes are made with the crate's
/// defaults (19 MiB, 2 passes, 1 lane), far below these; a hash past them comes from
/// a forged or corrupt record, and verifying it would tie up a node's memory or CPU
/// (m = 4294967295 KiB aborts the process), so it is refused without being run.
pub const ARGON2_MEMORY_KIB_MAX: u32 = 256 * 1024;
pub const ARGON2_PASSES_MAX: u32 = 16;
pub const ARGON2_LANES_MAX: u32 = 8;
/// A PHC string of argon2id with the largest costs above is about 120 bytes.
pub const PASSWORD_HASH_BYTES_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("a password hash is longer than {PASSWORD_HASH_BYTES_MAX} bytes")]
    TooLong,
    #[error("a password hash is not a PHC string")]
    Unparsable,
    #[error("a password hash uses {0}, not argon2id version 19")]
    Scheme(String),
    #[error("a password hash asks for costs past the bounds (m={m} KiB, t={t}, p={p})")]
    Cost { m: u32, t: u32, p: u32 },
}

/// Checks that `phc` is an argon2id (version 19) hash whose costs lie within the
/// bounds above. Every hash that arrives from a peer, and every hash before it is
/// verified, passes this check.
pub fn check_password_hash(phc: &str) -> Result<(), HashError> {
    if phc.len() > PASSWORD_HASH_BYTES_MAX {
        return Err(HashError::TooLong);
    }
    let hash = PasswordHash::new(phc).map_err(|_| HashError::Unparsable)?;
    if hash.algorithm != argon2::ARGON2ID_IDENT || hash.version != Some(0x13) {
        return Err(HashError::Scheme(format!(
            "{} v{:?}",
            hash.algorithm, hash.version
        )));
    }
    let param = |name: &str| hash.params.get_decimal(name);
    let (Some(m), Some(t), Some(p)) = (param("m"), param("t"), param("p")) else {
        return Err(HashError::Unparsable);
    };
    if m > ARGON2_MEMORY_KIB_MAX || t > ARGON2_PASSES_MAX || p > ARGON2_LANES_MAX {
        return Err(HashError::Cost { m, t, p });
    }
    argon2::Params::try_from(&hash).map_err(|_| HashError::Unparsable)?;
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err(HashError::Unparsable);
    }
    Ok(())
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
        if check_password_hash(&self.password_hash).is_err() {
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
    use crate::testing::version;
    use proptest::prelude::*;

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
    fn only_bounded_argon2id_hashes_pass_and_verify() {
        let address = Address::parse("alice@example.org").unwrap();
        let account = Account::new(address, "pw", version(1, 1)).unwrap();
        assert_eq!(check_password_hash(&account.password_hash), Ok(()));
        let (_, tail) = account.password_hash.split_once("$m=").unwrap();
        let (_, rest) = tail.split_once(',').unwrap();
        // The same salt and output under costs a forger would pick.
        for (params, expected) in [
            (
                "m=4294967295,t=2,p=1",
                HashError::Cost {
                    m: 4294967295,
                    t: 2,
                    p: 1,
                },
            ),
            (
                "m=19456,t=4294967295,p=1",
                HashError::Cost {
                    m: 19456,
                    t: 4294967295,
                    p: 1,
                },
            ),
            (
                "m=19456,t=2,p=255",
                HashError::Cost {
                    m: 19456,
                    t: 2,
                    p: 255,
                },
            ),
        ] {
            let (_, after_t_p) = rest.split_once('$').unwrap();
            let forged = format!("$argon2id$v=19${params}${after_t_p}");
            assert_eq!(check_password_hash(&forged), Err(expected), "{forged}");
            let forged_account = Account {
                password_hash: forged,
                ..account.clone()
            };
            assert!(!forged_account.verify(b"pw"), "refused, not hashed");
        }
        let argon2i = account.password_hash.replacen("argon2id", "argon2i", 1);
        assert!(matches!(
            check_password_hash(&argon2i),
            Err(HashError::Scheme(_))
        ));
        assert_eq!(check_password_hash("plain"), Err(HashError::Unparsable));
        assert_eq!(
            check_password_hash(&"$".repeat(PASSWORD_HASH_BYTES_MAX + 1)),
            Err(HashError::TooLong)
        );
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
