//! Mailboxes as mergeable data: received ids minus tombstones.

use std::collections::BTreeMap;

use crate::MessageId;

/// The state of one mailbox as one replica knows it.
///
/// `received` maps every message id ever delivered to its size in octets;
/// `tombstones` maps deleted ids to the deletion time (milliseconds since the epoch,
/// used only to garbage-collect tombstones after a grace period). A tombstone beats
/// its message for ever: a message is visible iff it was received and has no
/// tombstone. Both maps only grow, and [`Mailbox::merge`] is their union, which makes
/// merging commutative, associative and idempotent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mailbox {
    pub received: BTreeMap<MessageId, u64>,
    pub tombstones: BTreeMap<MessageId, u64>,
}

impl Mailbox {
    /// Folds `other` into `self`. Where both sides name the same id with different
    /// values (never for sizes of immutable messages; possible for deletion times),
    /// the larger value wins so that the result does not depend on the order.
    pub fn merge(&mut self, other: &Mailbox) {
        for (id, size) in &other.received {
            let entry = self.received.entry(*id).or_insert(*size);
            *entry = (*entry).max(*size);
        }
        for (id, deleted_ms) in &other.tombstones {
            let entry = self.tombstones.entry(*id).or_insert(*deleted_ms);
            *entry = (*entry).max(*deleted_ms);
        }
    }

    /// Visible messages (received, not deleted) in arrival order, with their sizes.
    pub fn visible(&self) -> impl Iterator<Item = (MessageId, u64)> + '_ {
        self.received
            .iter()
            .filter(|(id, _)| !self.tombstones.contains_key(id))
            .map(|(id, size)| (*id, *size))
    }

    pub fn is_visible(&self, id: MessageId) -> bool {
        self.received.contains_key(&id) && !self.tombstones.contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::merged;
    use proptest::prelude::*;

    fn mailbox() -> impl Strategy<Value = Mailbox> {
        // Few distinct ids so that the generated mailboxes overlap often.
        let id = (0u128..12).prop_map(MessageId::from_u128);
        (
            proptest::collection::btree_map(id.clone(), 0u64..4, 0..8),
            proptest::collection::btree_map(id, 0u64..4, 0..8),
        )
            .prop_map(|(received, tombstones)| Mailbox {
                received,
                tombstones,
            })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in mailbox(), b in mailbox()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in mailbox(), b in mailbox(), c in mailbox()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in mailbox(), b in mailbox()) {
            let once = merged(&a, &b);
            prop_assert_eq!(merged(&once, &b), once.clone());
            prop_assert_eq!(merged(&a, &a), a);
        }

        #[test]
        fn a_tombstone_beats_its_message_whatever_the_order(a in mailbox(), b in mailbox()) {
            let result = merged(&a, &b);
            for id in a.tombstones.keys().chain(b.tombstones.keys()) {
                prop_assert!(!result.is_visible(*id));
            }
        }
    }
}
