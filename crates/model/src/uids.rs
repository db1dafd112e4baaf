//! The UID map of one folder (docs/DESIGN.md §11): which IMAP UID names which message,
//! as mergeable data with a deterministic conflict rule.
//!
//! The map is a grow-only set of [`UidClaim`]s, and [`UidMap::merge`] is set union,
//! so every replica holding the same claims resolves them the same way, whatever
//! order they arrived in. A session numbers the messages that have no UID by
//! [`UidMap::number`] (under a lease, after a quorum read) and writes the claims it
//! returns before showing them.
//!
//! If a partition let two sides number, the claims can clash. The rule, applied by
//! [`UidMap::resolve`]:
//! - a UID claimed for two different messages is retired: no claim on it counts;
//! - every numbering of a message carries a *generation*, one more than the highest
//!   generation of that message's claims the numbering saw. A message numbered twice
//!   in one generation (both sides numbered it) loses both claims, and a claim of a
//!   lower generation than the message's highest never counts again;
//! - a message whose claims all lost has no UID, so the next numbering gives it a
//!   new one, above the highest UID ever claimed, in a new generation.
//!
//! Retirement is for ever: adding claims can retire a live claim but never bring a
//! retired one back, and numbering only ever goes above every UID claimed, so no UID
//! is reused and no UID names two messages in a converged map.

use std::collections::{BTreeMap, BTreeSet};

use crate::MessageId;

/// The first UID of a folder (RFC 9051 §2.3.1.1: UIDs are non-zero).
pub const UID_FIRST: u32 = 1;

/// One numbering of one message. Field order gives the set its UID order.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct UidClaim {
    pub uid: u32,
    pub message: MessageId,
    pub generation: u32,
}

/// The claims of one folder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UidMap {
    pub claims: BTreeSet<UidClaim>,
}

/// What the claims mean: the live pairs in both directions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub uid_of: BTreeMap<MessageId, u32>,
    pub message_of: BTreeMap<u32, MessageId>,
    /// UIDNEXT: one above the highest UID ever claimed, live or retired.
    pub uid_next: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("the folder has run out of UIDs")]
    Exhausted,
}

impl UidMap {
    pub fn merge(&mut self, other: &UidMap) {
        self.claims.extend(other.claims.iter().copied());
    }

    /// One above the highest UID ever claimed here.
    pub fn uid_next(&self) -> u32 {
        self.claims
            .last()
            .map_or(UID_FIRST, |claim| claim.uid.saturating_add(1))
    }

    /// Applies the conflict rule of the module documentation.
    pub fn resolve(&self) -> Resolved {
        let mut messages_of_uid: BTreeMap<u32, BTreeSet<MessageId>> = BTreeMap::new();
        let mut top_generation: BTreeMap<MessageId, u32> = BTreeMap::new();
        for claim in &self.claims {
            messages_of_uid
                .entry(claim.uid)
                .or_default()
                .insert(claim.message);
            let generation = top_generation
                .entry(claim.message)
                .or_insert(claim.generation);
            *generation = (*generation).max(claim.generation);
        }
        // The claims of each message in its top generation, one UID each.
        let mut top_claims: BTreeMap<MessageId, BTreeSet<u32>> = BTreeMap::new();
        for claim in &self.claims {
            if top_generation[&claim.message] == claim.generation {
                top_claims
                    .entry(claim.message)
                    .or_default()
                    .insert(claim.uid);
            }
        }
        let mut resolved = Resolved {
            uid_next: self.uid_next(),
            ..Resolved::default()
        };
        for (message, uids) in top_claims {
            let [uid] = *uids.iter().copied().collect::<Vec<u32>>() else {
                continue;
            };
            if messages_of_uid[&uid].len() == 1 {
                resolved.uid_of.insert(message, uid);
                resolved.message_of.insert(uid, message);
            }
        }
        assert_eq!(resolved.uid_of.len(), resolved.message_of.len());
        resolved
    }

    /// The claims that number `visible` messages (the folder's current messages)
    /// that have no live UID, in message-id order above every UID ever claimed. The
    /// caller writes them with the write quorum and merges them only once written.
    pub fn number(
        &self,
        visible: impl IntoIterator<Item = MessageId>,
    ) -> Result<Vec<UidClaim>, UidError> {
        let resolved = self.resolve();
        let mut generation_seen: BTreeMap<MessageId, u32> = BTreeMap::new();
        for claim in &self.claims {
            let generation = generation_seen.entry(claim.message).or_insert(0);
            *generation = (*generation).max(claim.generation + 1);
        }
        let unnumbered: BTreeSet<MessageId> = visible
            .into_iter()
            .filter(|message| !resolved.uid_of.contains_key(message))
            .collect();
        if u64::from(resolved.uid_next) + unnumbered.len() as u64 > u64::from(u32::MAX) {
            return Err(UidError::Exhausted);
        }
        let claims = (resolved.uid_next..)
            .zip(unnumbered)
            .map(|(uid, message)| UidClaim {
                uid,
                message,
                generation: generation_seen.get(&message).copied().unwrap_or(0),
            })
            .collect();
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::check_merge_laws;
    use proptest::prelude::*;

    fn id(raw: u128) -> MessageId {
        MessageId::from_u128(raw)
    }

    fn numbered(map: &mut UidMap, visible: &[u128]) {
        let claims = map.number(visible.iter().map(|raw| id(*raw))).unwrap();
        map.claims.extend(claims);
    }

    #[test]
    fn numbering_goes_in_message_order_above_everything() {
        let mut map = UidMap::default();
        numbered(&mut map, &[30, 10, 20]);
        let resolved = map.resolve();
        assert_eq!(
            resolved.uid_of,
            BTreeMap::from([(id(10), 1), (id(20), 2), (id(30), 3)])
        );
        assert_eq!(resolved.uid_next, 4);
        numbered(&mut map, &[10, 20, 30, 5]);
        assert_eq!(map.resolve().uid_of[&id(5)], 4);
    }

    #[test]
    fn a_partition_numbering_on_both_sides_resolves_and_renumbers() {
        let mut base = UidMap::default();
        numbered(&mut base, &[1]);
        let (mut left, mut right) = (base.clone(), base.clone());
        // Both sides number message 2 (a double numbering) and each a message of
        // its own on the same UID (a UID claimed twice).
        numbered(&mut left, &[1, 2, 3]);
        numbered(&mut right, &[1, 2, 4]);
        assert_eq!(left.resolve().uid_of[&id(2)], 2);
        assert_eq!(right.resolve().uid_of[&id(4)], 3);
        let mut healed = left.clone();
        healed.merge(&right);
        let resolved = healed.resolve();
        // Message 2 got UID 2 on both sides: one claim, nothing lost.
        assert_eq!(resolved.uid_of.get(&id(2)), Some(&2));
        assert_eq!(resolved.uid_of.get(&id(3)), None);
        assert_eq!(resolved.uid_of.get(&id(4)), None);
        numbered(&mut healed, &[1, 2, 3, 4]);
        let resolved = healed.resolve();
        assert_eq!(resolved.uid_of[&id(3)], 4);
        assert_eq!(resolved.uid_of[&id(4)], 5);
        // Message 9 numbered on each side with a different UID loses both.
        let (mut left, mut right) = (healed.clone(), healed.clone());
        numbered(&mut left, &[9]);
        numbered(&mut right, &[8, 9]);
        left.merge(&right);
        assert_eq!(left.resolve().uid_of.get(&id(9)), None);
        // Message 8 lost too: its UID was claimed for 9 on the other side.
        let resolved = left.resolve();
        assert_eq!((resolved.uid_of.get(&id(8)), resolved.uid_next), (None, 8));
        numbered(&mut left, &[8, 9]);
        assert_eq!(left.resolve().uid_of[&id(8)], 8);
        assert_eq!(left.resolve().uid_of[&id(9)], 9);
    }

    /// One replica's history: its map, and every UID → message pair it ever showed.
    #[derive(Clone, Default)]
    struct Replica {
        map: UidMap,
        shown: BTreeMap<u32, MessageId>,
        retired: BTreeSet<u32>,
    }

    impl Replica {
        /// Checks the per-replica guarantees against what this replica showed
        /// before, then records the new state.
        fn observe(&mut self) -> Result<(), TestCaseError> {
            let resolved = self.map.resolve();
            for (uid, message) in &resolved.message_of {
                prop_assert!(!self.retired.contains(uid), "retired uid {} came back", uid);
                if let Some(before) = self.shown.get(uid) {
                    prop_assert_eq!(before, message, "uid {} changed message", uid);
                }
            }
            for uid in self.shown.keys() {
                if !resolved.message_of.contains_key(uid) {
                    self.retired.insert(*uid);
                }
            }
            for (uid, message) in resolved.message_of {
                self.shown.insert(uid, message);
            }
            Ok(())
        }
    }

    #[derive(Clone, Debug)]
    enum Event {
        /// Replica `0` numbers the messages delivered so far, up to message `1`.
        Number(usize, u128),
        /// Replica `0` merges what replica `1` holds.
        Merge(usize, usize),
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        proptest::collection::vec(
            prop_oneof![
                (0usize..3, 0u128..8).prop_map(|(replica, up_to)| Event::Number(replica, up_to)),
                (0usize..3, 0usize..3).prop_map(|(into, from)| Event::Merge(into, from)),
            ],
            0..30,
        )
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(
            a in proptest::collection::btree_set((1u32..6, 0u128..4, 0u32..3), 0..8),
            b in proptest::collection::btree_set((1u32..6, 0u128..4, 0u32..3), 0..8),
            c in proptest::collection::btree_set((1u32..6, 0u128..4, 0u32..3), 0..8),
        ) {
            let map = |claims: &BTreeSet<(u32, u128, u32)>| UidMap {
                claims: claims.iter().map(|&(uid, message, generation)| UidClaim { uid, message: id(message), generation }).collect(),
            };
            let merged = |x: &UidMap, y: &UidMap| { let mut z = x.clone(); z.merge(y); z };
            let (a, b, c) = (map(&a), map(&b), map(&c));
            check_merge_laws(&a, &b, &c)?;
            let resolved = merged(&a, &b).resolve();
            prop_assert_eq!(resolved.uid_of.len(), resolved.message_of.len());
        }

        /// Three replicas number and merge in a random order (any pair may be cut
        /// off from the others for a while). Each replica never shows a retired UID
        /// again nor one UID for two messages; numbering always goes above every UID
        /// it knows; and after all merge, every message is numbered exactly once.
        #[test]
        fn replicas_converge_without_reusing_uids(events in events(), final_order in Just(()).prop_perturb(|_, mut rng| {
            let mut order = vec![0usize, 1, 2];
            for idx in (1..order.len()).rev() {
                order.swap(idx, rng.random_range(0..=idx));
            }
            order
        })) {
            let mut replicas = vec![Replica::default(); 3];
            for event in events {
                match event {
                    Event::Number(replica_idx, up_to) => {
                        let replica = &mut replicas[replica_idx];
                        let known_max = replica.map.uid_next();
                        let claims = replica.map.number((0..=up_to).map(id)).unwrap();
                        for claim in &claims {
                            prop_assert!(claim.uid >= known_max);
                        }
                        replica.map.claims.extend(claims);
                        replica.observe()?;
                    }
                    Event::Merge(into, from) => {
                        let theirs = replicas[from].map.clone();
                        replicas[into].map.merge(&theirs);
                        replicas[into].observe()?;
                    }
                }
            }
            // Heal: everyone merges everything, in a random order, twice over.
            let mut all = UidMap::default();
            for replica_idx in final_order.iter().chain(final_order.iter().rev()) {
                all.merge(&replicas[*replica_idx].map);
            }
            for replica in &mut replicas {
                replica.map.merge(&all);
                replica.observe()?;
                let claims = replica.map.number((0..8).map(id)).unwrap();
                replica.map.claims.extend(claims);
                replica.observe()?;
            }
            // One more exchange: identical claim sets resolve identically.
            let mut converged = UidMap::default();
            for replica in &replicas {
                converged.merge(&replica.map);
            }
            let resolved = converged.resolve();
            for replica in &mut replicas {
                replica.map.merge(&converged);
                prop_assert_eq!(replica.map.resolve(), resolved.clone());
                replica.observe()?;
            }
        }
    }
}
