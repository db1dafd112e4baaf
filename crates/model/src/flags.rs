//! IMAP flags as mergeable data: one last-writer-wins register per message and flag.
//!
//! A flag is set or cleared by writing a register for the pair (message, flag) with a
//! fresh [`Version`]; concurrent writes on different nodes resolve to the same value
//! everywhere because the higher version wins. Registers are never removed (a
//! cleared flag is a register holding `false`), so a replica that missed a clear
//! cannot set the flag again by merging an older `true`.
//!
//! `\Recent` is not stored (RFC 9051 drops it), and `\Deleted` is only a flag: the
//! message disappears when EXPUNGE writes its tombstone in the folder's
//! [`crate::Mailbox`], the same tombstone POP3 writes.

use std::collections::BTreeMap;
use std::fmt;

use crate::{Lww, MessageId, Version};

/// A keyword is an IMAP atom; this bounds it so a peer cannot grow a flag table
/// without limit through one name.
pub const FLAG_BYTES_MAX: usize = 64;

/// Distinct flags one message may carry; more are refused (IMAP's `[LIMIT]`).
pub const FLAGS_PER_MESSAGE_MAX: usize = 64;

/// A flag name: one of RFC 9051 §2.3.2's system flags in its canonical spelling, or
/// a keyword (an atom, compared case-insensitively and kept as first written).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct FlagName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("a flag is a system flag or an atom of at most {FLAG_BYTES_MAX} bytes")]
    Invalid,
    #[error("a message carries at most {FLAGS_PER_MESSAGE_MAX} flags")]
    TooMany,
}

impl FlagName {
    pub const SEEN: &str = "\\Seen";
    pub const ANSWERED: &str = "\\Answered";
    pub const FLAGGED: &str = "\\Flagged";
    pub const DELETED: &str = "\\Deleted";
    pub const DRAFT: &str = "\\Draft";
    const SYSTEM: [&str; 5] = [
        Self::SEEN,
        Self::ANSWERED,
        Self::FLAGGED,
        Self::DELETED,
        Self::DRAFT,
    ];

    /// Validates and normalises a flag as a client spelled it. Keywords are stored
    /// lower-cased so that `$Junk` and `$junk` are one register on every replica.
    pub fn parse(text: &str) -> Result<FlagName, FlagError> {
        if let Some(system) = Self::SYSTEM
            .iter()
            .find(|system| system.eq_ignore_ascii_case(text))
        {
            return Ok(FlagName((*system).to_owned()));
        }
        let is_atom_char = |byte: u8| byte.is_ascii_graphic() && !b"(){%*\"\\]".contains(&byte);
        if text.is_empty() || text.len() > FLAG_BYTES_MAX || !text.bytes().all(is_atom_char) {
            return Err(FlagError::Invalid);
        }
        Ok(FlagName(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_system(&self) -> bool {
        self.0.starts_with('\\')
    }
}

impl fmt::Display for FlagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FlagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlagName({})", self.0)
    }
}

/// The flags of one folder's messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub registers: BTreeMap<(MessageId, FlagName), Lww<bool>>,
}

impl Flags {
    /// Folds `other` into `self`, register by register.
    pub fn merge(&mut self, other: &Flags) {
        for (key, register) in &other.registers {
            match self.registers.get_mut(key) {
                Some(ours) => ours.merge(register),
                None => {
                    self.registers.insert(key.clone(), register.clone());
                }
            }
        }
    }

    /// The delta that sets (`value` true) or clears `flags` on `message`, to be
    /// written to the replicas and then merged. Refused when the message would
    /// carry more than [`FLAGS_PER_MESSAGE_MAX`] distinct flags.
    pub fn write(
        &self,
        message: MessageId,
        flags: &[FlagName],
        value: bool,
        version: Version,
    ) -> Result<Flags, FlagError> {
        let mut delta = Flags::default();
        for flag in flags {
            delta
                .registers
                .insert((message, flag.clone()), Lww::new(version, value));
        }
        let n_known = self.registers_of(message).count();
        let n_new = flags
            .iter()
            .filter(|flag| !self.registers.contains_key(&(message, (*flag).clone())))
            .count();
        if value && n_known + n_new > FLAGS_PER_MESSAGE_MAX {
            return Err(FlagError::TooMany);
        }
        Ok(delta)
    }

    /// The flags set on `message`, in name order.
    pub fn of(&self, message: MessageId) -> impl Iterator<Item = &FlagName> + '_ {
        self.registers_of(message)
            .filter(|(_, register)| register.value)
            .map(|((_, flag), _)| flag)
    }

    pub fn is_set(&self, message: MessageId, flag: &FlagName) -> bool {
        self.registers
            .get(&(message, flag.clone()))
            .is_some_and(|register| register.value)
    }

    /// Every keyword any message of the folder ever carried (SELECT's FLAGS list).
    pub fn keywords(&self) -> std::collections::BTreeSet<&FlagName> {
        self.registers
            .keys()
            .map(|(_, flag)| flag)
            .filter(|flag| !flag.is_system())
            .collect()
    }

    fn registers_of(
        &self,
        message: MessageId,
    ) -> impl Iterator<Item = (&(MessageId, FlagName), &Lww<bool>)> + '_ {
        let first = (message, FlagName(String::new()));
        self.registers
            .range(first..)
            .take_while(move |((id, _), _)| *id == message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_merge_laws, version};
    use proptest::prelude::*;

    #[test]
    fn flag_names_are_normalised_and_checked() {
        assert_eq!(FlagName::parse("\\seen").unwrap().as_str(), "\\Seen");
        assert_eq!(FlagName::parse("$Junk").unwrap().as_str(), "$junk");
        for bad in ["", "\\Recent", "a b", "x(", &"k".repeat(FLAG_BYTES_MAX + 1)] {
            assert_eq!(FlagName::parse(bad), Err(FlagError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn the_last_write_wins_and_a_clear_is_kept() {
        let message = MessageId::from_u128(1);
        let seen = FlagName::parse("\\Seen").unwrap();
        let mut flags = Flags::default();
        let set = flags
            .write(message, std::slice::from_ref(&seen), true, version(10, 1))
            .unwrap();
        let clear = flags
            .write(message, std::slice::from_ref(&seen), false, version(20, 2))
            .unwrap();
        flags.merge(&clear);
        flags.merge(&set);
        assert!(!flags.is_set(message, &seen));
        assert_eq!(flags.of(message).count(), 0);
        assert_eq!(flags.of(MessageId::from_u128(2)).count(), 0);
    }

    #[test]
    fn too_many_flags_are_refused() {
        let message = MessageId::from_u128(1);
        let many: Vec<FlagName> = (0..=FLAGS_PER_MESSAGE_MAX)
            .map(|idx| FlagName::parse(&format!("k{idx}")).unwrap())
            .collect();
        let flags = Flags::default();
        assert_eq!(
            flags.write(message, &many, true, version(1, 1)),
            Err(FlagError::TooMany)
        );
        assert!(flags.write(message, &many, false, version(1, 1)).is_ok());
    }

    fn flags() -> impl Strategy<Value = Flags> {
        let key = (
            (0u128..4).prop_map(MessageId::from_u128),
            prop_oneof![Just("\\Seen"), Just("\\Deleted"), Just("$junk")]
                .prop_map(|name| FlagName::parse(name).unwrap()),
        );
        let register = (0u64..4, 0u64..3, any::<bool>())
            .prop_map(|(wall_ms, node, value)| Lww::new(version(wall_ms, node), value));
        proptest::collection::btree_map(key, register, 0..10)
            .prop_map(|registers| Flags { registers })
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(a in flags(), b in flags(), c in flags()) {
            check_merge_laws(&a, &b, &c)?;
        }
    }
}
