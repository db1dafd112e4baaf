//! One IMAP folder's replicated state in one value: its messages, their flags and
//! their UIDs, and the views SELECT and STATUS are built from.
//!
//! Keeping the three together gives SELECT and STATUS one definition of what a
//! folder shows (docs/DESIGN.md §11: STATUS numbers new messages as SELECT would): the
//! shell numbers with [`FolderState::claims_to_write`], writes the claims, merges
//! them, and only then reads [`FolderState::messages`] or [`FolderState::counts`].

use crate::{FlagName, Flags, Mailbox, MessageId, UidClaim, UidError, UidMap};

/// The state of one folder as one replica knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FolderState {
    /// Received ids minus tombstones; INBOX's is the POP3 maildrop, and EXPUNGE
    /// writes the same tombstones as POP3's DELE.
    pub mailbox: Mailbox,
    pub flags: Flags,
    pub uids: UidMap,
}

/// A message as IMAP shows it: visible and numbered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberedMessage {
    pub uid: u32,
    pub id: MessageId,
    pub size: u64,
    pub flags: Vec<FlagName>,
}

/// STATUS's numbers (RFC 9051 §6.3.11), for the messages SELECT would show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FolderCounts {
    pub n_messages: u32,
    pub n_unseen: u32,
    pub n_deleted: u32,
    pub uid_next: u32,
}

impl FolderState {
    pub fn merge(&mut self, other: &FolderState) {
        self.mailbox.merge(&other.mailbox);
        self.flags.merge(&other.flags);
        self.uids.merge(&other.uids);
    }

    /// The UID claims that number every visible message without a live UID.
    pub fn claims_to_write(&self) -> Result<Vec<UidClaim>, UidError> {
        self.uids.number(self.mailbox.visible().map(|(id, _)| id))
    }

    /// The visible messages that have a UID, in UID order. A visible message
    /// without one (numbering has not run since it arrived, or its claims were
    /// lost to a conflict) is not shown until it is numbered.
    pub fn messages(&self) -> Vec<NumberedMessage> {
        let resolved = self.uids.resolve();
        let mut messages: Vec<NumberedMessage> = self
            .mailbox
            .visible()
            .filter_map(|(id, size)| {
                let uid = *resolved.uid_of.get(&id)?;
                Some(NumberedMessage {
                    uid,
                    id,
                    size,
                    flags: self.flags.of(id).cloned().collect(),
                })
            })
            .collect();
        messages.sort_by_key(|message| message.uid);
        messages
    }

    pub fn counts(&self) -> FolderCounts {
        let messages = self.messages();
        let n_with = |flag: &str| {
            let flag = FlagName::parse(flag).expect("a system flag");
            messages
                .iter()
                .filter(|message| message.flags.contains(&flag))
                .count() as u32
        };
        FolderCounts {
            n_messages: messages.len() as u32,
            n_unseen: messages.len() as u32 - n_with(FlagName::SEEN),
            n_deleted: n_with(FlagName::DELETED),
            uid_next: self.uids.uid_next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lww;
    use crate::testing::{check_merge_laws, merged, version};
    use proptest::prelude::*;

    #[test]
    fn numbering_then_reading_shows_what_status_counts() {
        let mut state = FolderState::default();
        for raw in [3u128, 1, 2] {
            state
                .mailbox
                .received
                .insert(MessageId::from_u128(raw), 10 * raw as u64);
        }
        assert!(state.messages().is_empty());
        let claims = state.claims_to_write().unwrap();
        state.uids.claims.extend(claims);
        let seen = FlagName::parse("\\Seen").unwrap();
        let delta = state
            .flags
            .write(MessageId::from_u128(2), &[seen], true, version(1, 1))
            .unwrap();
        state.flags.merge(&delta);
        state.mailbox.tombstones.insert(MessageId::from_u128(3), 5);
        let uids: Vec<(u32, u128)> = state
            .messages()
            .iter()
            .map(|m| (m.uid, m.id.as_u128()))
            .collect();
        assert_eq!(uids, [(1, 1), (2, 2)]);
        assert_eq!(
            state.counts(),
            FolderCounts {
                n_messages: 2,
                n_unseen: 1,
                n_deleted: 0,
                uid_next: 4
            }
        );
        assert!(state.claims_to_write().unwrap().is_empty());
    }

    fn state() -> impl Strategy<Value = FolderState> {
        let id = (0u128..6).prop_map(MessageId::from_u128);
        (
            proptest::collection::btree_map(id.clone(), 1u64..4, 0..6),
            proptest::collection::btree_map(id.clone(), 0u64..3, 0..3),
            proptest::collection::btree_map(
                (id.clone(), Just(FlagName::parse("\\Seen").unwrap())),
                (0u64..3, 0u64..2, any::<bool>())
                    .prop_map(|(ms, node, value)| Lww::new(version(ms, node), value)),
                0..4,
            ),
            proptest::collection::btree_set((1u32..8, id, 0u32..2), 0..6),
        )
            .prop_map(|(received, tombstones, registers, claims)| FolderState {
                mailbox: Mailbox {
                    received,
                    tombstones,
                },
                flags: Flags { registers },
                uids: UidMap {
                    claims: claims
                        .into_iter()
                        .map(|(uid, message, generation)| UidClaim {
                            uid,
                            message,
                            generation,
                        })
                        .collect(),
                },
            })
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(a in state(), b in state(), c in state()) {
            check_merge_laws(&a, &b, &c)?;
        }

        /// After numbering, every visible message shows once, with a UID of its
        /// own below UIDNEXT, in ascending order, and no deleted message shows.
        #[test]
        fn numbered_views_are_consistent(a in state(), b in state()) {
            let mut state = merged(&a, &b);
            let claims = state.claims_to_write().unwrap();
            state.uids.claims.extend(claims);
            let messages = state.messages();
            let n_visible = state.mailbox.visible().count();
            prop_assert_eq!(messages.len(), n_visible);
            prop_assert!(messages.windows(2).all(|pair| pair[0].uid < pair[1].uid));
            let counts = state.counts();
            prop_assert!(messages.iter().all(|m| m.uid < counts.uid_next && state.mailbox.is_visible(m.id)));
            prop_assert_eq!(counts.n_messages as usize, n_visible);
        }
    }
}
