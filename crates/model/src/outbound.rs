//! The outbound queue's entries: mail accepted for domains the ring does not serve,
//! waiting to leave it (docs/DESIGN.md §12).
//!
//! An entry is replicated like a mailbox, under its own ring key, and merges the
//! same way: the envelope never changes once written; each recipient's final
//! outcome, once known anywhere, stays known (a set union); the attempt log is a
//! bounded union; the schedule (when to try next) is a last-writer-wins register,
//! so that an operator's "retry now" can move it earlier; and removal is a
//! tombstone that beats everything else for ever. Any two replicas that saw the
//! same writes hold the same entry, in whatever order the writes arrived.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{MessageId, Version};

/// Attempts an entry remembers (the newest ones); enough to show an operator what
/// went wrong without letting a long-deferred entry grow without bound.
pub const OUTBOUND_ATTEMPTS_KEPT_MAX: usize = 16;
/// Recipients of one entry at most (as SMTP's recipients per message).
pub const OUTBOUND_RECIPIENTS_MAX: usize = 100;
/// Octets of one error text kept in an attempt or an outcome.
pub const OUTBOUND_ERROR_BYTES_MAX: usize = 512;

/// What finally happened to one recipient.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The destination accepted it (a 2xx to the end of DATA).
    Delivered,
    /// A permanent failure (a 5xx, or the entry's lifetime ran out): the sender
    /// gets a delivery status notification.
    Failed { status: String, reason: String },
}

/// One delivery attempt, as the node that made it recorded it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: u64,
    /// The ring id of the node that tried.
    pub node: u64,
    /// Why recipients were deferred; empty when nothing was.
    pub error: String,
}

/// One queued message's envelope and delivery state (the octets are stored beside
/// it, written once with the entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    pub id: MessageId,
    /// The reverse path; empty for the null sender `<>`, which is never bounced to.
    pub sender: String,
    /// Every recipient, lower-cased, sorted, each once.
    pub recipients: Vec<String>,
    pub created_ms: u64,
    /// The recipients whose fate is settled.
    pub outcomes: BTreeMap<String, Outcome>,
    /// The newest attempts, oldest first, at most [`OUTBOUND_ATTEMPTS_KEPT_MAX`].
    pub attempts: BTreeSet<Attempt>,
    /// When to try next, as last written (by [`Version`]).
    pub next_attempt: (Version, u64),
    /// Set when the entry was delivered, bounced or deleted by an operator.
    pub removed_ms: Option<u64>,
}

impl Outbound {
    /// A new entry, to be tried at once.
    pub fn new(
        id: MessageId,
        sender: String,
        recipients: impl IntoIterator<Item = String>,
        created_ms: u64,
        version: Version,
    ) -> Outbound {
        let recipients: BTreeSet<String> = recipients
            .into_iter()
            .map(|recipient| recipient.to_lowercase())
            .collect();
        Outbound {
            id,
            sender,
            recipients: recipients.into_iter().collect(),
            created_ms,
            outcomes: BTreeMap::new(),
            attempts: BTreeSet::new(),
            next_attempt: (version, created_ms),
            removed_ms: None,
        }
    }

    /// Merges `other`, another replica's copy of the same entry. Commutative,
    /// associative and idempotent.
    pub fn merge(&mut self, other: &Outbound) {
        assert_eq!(self.id, other.id, "only copies of one entry merge");
        for (recipient, outcome) in &other.outcomes {
            match self.outcomes.get(recipient) {
                // Two nodes settled one recipient differently (a takeover raced
                // the first node's write): keep the larger, the same on every
                // replica; `Failed` sorts above `Delivered`, so a bounce is never
                // lost to a delivery it raced with.
                Some(ours) if ours >= outcome => {}
                _ => {
                    self.outcomes.insert(recipient.clone(), outcome.clone());
                }
            }
        }
        self.attempts.extend(other.attempts.iter().cloned());
        self.trim_attempts();
        // By version; the time breaks a tie, which only a forged or corrupt
        // copy can produce (every write has its own version).
        self.next_attempt = self.next_attempt.max(other.next_attempt);
        self.removed_ms = self.removed_ms.max(other.removed_ms);
    }

    /// Records one attempt, keeping the newest [`OUTBOUND_ATTEMPTS_KEPT_MAX`].
    pub fn record_attempt(&mut self, attempt: Attempt) {
        self.attempts.insert(attempt);
        self.trim_attempts();
    }

    fn trim_attempts(&mut self) {
        while self.attempts.len() > OUTBOUND_ATTEMPTS_KEPT_MAX {
            self.attempts.pop_first();
        }
    }

    /// The recipients still waiting for delivery.
    pub fn pending(&self) -> impl Iterator<Item = &String> + '_ {
        self.recipients
            .iter()
            .filter(|recipient| !self.outcomes.contains_key(*recipient))
    }

    /// Whether every recipient's fate is settled.
    pub fn is_settled(&self) -> bool {
        self.pending().next().is_none()
    }

    /// The recipients that failed for good, with their status and reason.
    pub fn failures(&self) -> impl Iterator<Item = (&String, &str, &str)> + '_ {
        self.outcomes
            .iter()
            .filter_map(|(recipient, outcome)| match outcome {
                Outcome::Failed { status, reason } => {
                    Some((recipient, status.as_str(), reason.as_str()))
                }
                Outcome::Delivered => None,
            })
    }

    /// The last error of the newest attempt, if it deferred anything.
    pub fn last_error(&self) -> Option<&str> {
        self.attempts
            .last()
            .map(|attempt| attempt.error.as_str())
            .filter(|error| !error.is_empty())
    }
}

/// `text` cut to at most [`OUTBOUND_ERROR_BYTES_MAX`] octets on a character
/// boundary: error texts come from remote servers and are stored and replicated.
pub fn bounded_error(text: &str) -> String {
    let mut end = text.len().min(OUTBOUND_ERROR_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{check_merge_laws, merged, version};

    fn base() -> Outbound {
        Outbound::new(
            MessageId::from_u128(7),
            "alice@a.test".to_owned(),
            [
                "Bob@B.test".to_owned(),
                "carol@b.test".to_owned(),
                "bob@b.test".to_owned(),
            ],
            1_000,
            version(1_000, 1),
        )
    }

    /// One change a replica may have seen.
    #[derive(Clone, Debug)]
    enum Change {
        Settle(usize, Outcome),
        Attempt(u64, u64),
        Schedule(u64, u64, u64),
        Remove(u64),
    }

    fn change() -> impl Strategy<Value = Change> {
        let outcome = prop_oneof![
            Just(Outcome::Delivered),
            ("[45][.][0-9][.][0-9]", "[a-z ]{0,8}")
                .prop_map(|(status, reason)| Outcome::Failed { status, reason }),
        ];
        prop_oneof![
            (0..2usize, outcome).prop_map(|(idx, outcome)| Change::Settle(idx, outcome)),
            (0..40u64, 1..4u64).prop_map(|(at_ms, node)| Change::Attempt(at_ms, node)),
            (0..40u64, 1..4u64, 0..1_000u64)
                .prop_map(|(wall_ms, node, at)| Change::Schedule(wall_ms, node, at)),
            (0..40u64).prop_map(Change::Remove),
        ]
    }

    fn replica(changes: &[Change]) -> Outbound {
        let mut entry = base();
        for change in changes {
            match change {
                Change::Settle(idx, outcome) => {
                    let recipient = entry.recipients[*idx].clone();
                    let mut other = base();
                    other.outcomes.insert(recipient, outcome.clone());
                    entry.merge(&other);
                }
                Change::Attempt(at_ms, node) => entry.record_attempt(Attempt {
                    at_ms: *at_ms,
                    node: *node,
                    error: String::new(),
                }),
                Change::Schedule(wall_ms, node, at) => {
                    let mut other = base();
                    other.next_attempt = (version(*wall_ms + 2_000, *node), *at);
                    entry.merge(&other);
                }
                Change::Remove(at_ms) => {
                    let mut other = base();
                    other.removed_ms = Some(*at_ms);
                    entry.merge(&other);
                }
            }
        }
        entry
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            a in proptest::collection::vec(change(), 0..24),
            b in proptest::collection::vec(change(), 0..24),
            c in proptest::collection::vec(change(), 0..24),
        ) {
            let (a, b, c) = (replica(&a), replica(&b), replica(&c));
            check_merge_laws(&a, &b, &c)?;
            prop_assert!(merged(&a, &b).attempts.len() <= OUTBOUND_ATTEMPTS_KEPT_MAX);
        }
    }

    #[test]
    fn recipients_are_lower_cased_and_unique_and_settle_one_by_one() {
        let mut entry = base();
        assert_eq!(entry.recipients, vec!["bob@b.test", "carol@b.test"]);
        assert!(!entry.is_settled());
        entry
            .outcomes
            .insert("bob@b.test".to_owned(), Outcome::Delivered);
        assert_eq!(entry.pending().collect::<Vec<_>>(), vec!["carol@b.test"]);
        entry.outcomes.insert(
            "carol@b.test".to_owned(),
            Outcome::Failed {
                status: "5.1.1".to_owned(),
                reason: "550 no such user".to_owned(),
            },
        );
        assert!(entry.is_settled());
        assert_eq!(
            entry.failures().collect::<Vec<_>>(),
            vec![(&"carol@b.test".to_owned(), "5.1.1", "550 no such user")]
        );
    }

    #[test]
    fn a_newer_schedule_wins_even_when_earlier() {
        let mut entry = base();
        let mut retry_now = base();
        retry_now.next_attempt = (version(5_000, 2), 10);
        entry.next_attempt = (version(4_000, 1), 9_000);
        entry.merge(&retry_now);
        assert_eq!(entry.next_attempt.1, 10);
    }

    #[test]
    fn error_texts_are_cut_on_a_character_boundary() {
        let long = "é".repeat(OUTBOUND_ERROR_BYTES_MAX);
        let cut = bounded_error(&long);
        assert!(cut.len() <= OUTBOUND_ERROR_BYTES_MAX);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
