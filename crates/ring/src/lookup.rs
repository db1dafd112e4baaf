//! The iterative lookup (`find_successor`) as a state machine that routes around
//! nodes that do not answer.
//!
//! Each node answers one step ([`LookupStep`], from [`crate::Node::next_hop`]); the
//! [`Lookup`] on the asking side decides whom to ask next. It keeps every answer's
//! untried candidates on a stack, so an unreachable candidate costs one timeout and
//! the lookup continues with the next best one, or backs up to an earlier answer.

use cm_types::RingKey;

use crate::node_ref::{NodeRef, Unreachable};

/// The most remote queries one lookup may make, timeouts included. A correct ring
/// needs about log2 N of them; the rest is room for routing around dead nodes.
pub const LOOKUP_QUERIES_MAX: u32 = 128;

/// One node's answer to "who is the successor of `key`?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupStep {
    /// The key lies between the answering node and one of its successors: `owner` is
    /// the key's successor. If `owner` turns out dead, the key's successor is the first
    /// live node of `fallbacks` (the answering node's further successors, in order).
    Done {
        owner: NodeRef,
        fallbacks: Vec<NodeRef>,
    },
    /// The answering node knows nodes closer to the key: ask them, best first. The
    /// later entries are fallbacks for when the earlier ones do not answer.
    Ask { candidates: Vec<NodeRef> },
}

/// A finished lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupResult {
    /// The key's successor, which answered a query moments ago.
    pub owner: NodeRef,
    /// Remote answers received while routing (the path length of the Chord paper).
    pub hops: u32,
    /// Queries that got no answer and were routed around.
    pub timeouts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("lookup of key {key} failed: no candidate node answered")]
    Exhausted { key: RingKey },
    #[error("lookup of key {key} gave up after {LOOKUP_QUERIES_MAX} queries")]
    QueriesExceeded { key: RingKey },
}

/// What the I/O driver must do next for a [`Lookup`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupAction {
    /// Call `next_hop(key)` on this node (one RPC, with a deadline) and feed the answer,
    /// or [`Unreachable`] on error or deadline, to [`Lookup::on_reply`].
    Query(NodeRef),
    Finished(Result<LookupResult, LookupError>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Asking nodes ever closer to the key.
    Routing,
    /// An owner was named; checking that it (or a fallback) is alive.
    Confirming,
}

/// One iterative lookup in progress. Drive it with [`Lookup::next_action`] and
/// [`Lookup::on_reply`] until it is finished.
#[derive(Clone, Debug)]
pub struct Lookup {
    key: RingKey,
    phase: Phase,
    /// Untried candidates of each `Ask` answer, the best one last so that `pop` takes it.
    routing_levels: Vec<Vec<NodeRef>>,
    /// Untried owners of the `Done` answer, the named owner last.
    owners_to_confirm: Vec<NodeRef>,
    outstanding: Option<NodeRef>,
    n_queries: u32,
    hops: u32,
    timeouts: u32,
    finished: Option<Result<LookupResult, LookupError>>,
}

impl Lookup {
    /// A lookup that starts by asking `entry` (used to join through an entry node and
    /// to probe a remembered peer, whose ring may not be ours).
    pub fn via(key: RingKey, entry: NodeRef) -> Lookup {
        let mut lookup = Lookup::empty(key);
        lookup.routing_levels.push(vec![entry]);
        lookup
    }

    /// A lookup whose first step was answered locally, without a hop.
    pub(crate) fn from_local_step(key: RingKey, step: LookupStep) -> Lookup {
        let mut lookup = Lookup::empty(key);
        lookup.take_step(step);
        lookup
    }

    fn empty(key: RingKey) -> Lookup {
        Lookup {
            key,
            phase: Phase::Routing,
            routing_levels: Vec::new(),
            owners_to_confirm: Vec::new(),
            outstanding: None,
            n_queries: 0,
            hops: 0,
            timeouts: 0,
            finished: None,
        }
    }

    pub fn key(&self) -> RingKey {
        self.key
    }

    /// The next thing to do. Calling it again before [`Lookup::on_reply`] returns
    /// the same query, so a driver may retry a query after a transport hiccup.
    pub fn next_action(&mut self) -> LookupAction {
        if let Some(result) = &self.finished {
            return LookupAction::Finished(result.clone());
        }
        if let Some(node) = &self.outstanding {
            return LookupAction::Query(node.clone());
        }
        if self.n_queries >= LOOKUP_QUERIES_MAX {
            return self.finish(Err(LookupError::QueriesExceeded { key: self.key }));
        }
        if self.phase == Phase::Confirming {
            if let Some(owner) = self.owners_to_confirm.last() {
                self.outstanding = Some(owner.clone());
                return LookupAction::Query(owner.clone());
            }
            // Every named owner is dead: back up and route through other candidates.
            self.phase = Phase::Routing;
        }
        while let Some(level) = self.routing_levels.last_mut() {
            if let Some(candidate) = level.pop() {
                self.outstanding = Some(candidate.clone());
                return LookupAction::Query(candidate);
            }
            self.routing_levels.pop();
        }
        self.finish(Err(LookupError::Exhausted { key: self.key }))
    }

    /// The answer of `from` to the query [`Lookup::next_action`] asked for.
    pub fn on_reply(&mut self, from: &NodeRef, reply: Result<LookupStep, Unreachable>) {
        let outstanding = self.outstanding.take();
        assert_eq!(
            outstanding.as_ref(),
            Some(from),
            "reply from a node that was not asked"
        );
        assert!(self.finished.is_none());
        self.n_queries += 1;
        match (self.phase, reply) {
            (Phase::Confirming, Ok(_)) => {
                let result = LookupResult {
                    owner: from.clone(),
                    hops: self.hops,
                    timeouts: self.timeouts,
                };
                self.finish(Ok(result));
            }
            (Phase::Confirming, Err(Unreachable)) => {
                self.timeouts += 1;
                let dead = self.owners_to_confirm.pop();
                assert_eq!(dead.as_ref(), Some(from));
            }
            (Phase::Routing, Ok(step)) => {
                self.hops += 1;
                self.take_step(step);
            }
            (Phase::Routing, Err(Unreachable)) => self.timeouts += 1,
        }
    }

    fn take_step(&mut self, step: LookupStep) {
        match step {
            LookupStep::Done { owner, fallbacks } => {
                self.phase = Phase::Confirming;
                self.owners_to_confirm = fallbacks.into_iter().rev().collect();
                self.owners_to_confirm.push(owner);
            }
            LookupStep::Ask { candidates } => {
                // The depth is bounded because every level costs at least one query.
                assert!(self.routing_levels.len() <= LOOKUP_QUERIES_MAX as usize);
                self.routing_levels
                    .push(candidates.into_iter().rev().collect());
            }
        }
    }

    fn finish(&mut self, result: Result<LookupResult, LookupError>) -> LookupAction {
        self.finished = Some(result.clone());
        LookupAction::Finished(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeRef {
        NodeRef {
            id,
            addr: format!("n{id}"),
        }
    }

    #[test]
    fn routes_around_a_dead_candidate_and_a_dead_owner() {
        // Goal: a dead best candidate and a dead named owner each cost one timeout.
        let mut lookup = Lookup::via(50, node(1));
        assert_eq!(lookup.next_action(), LookupAction::Query(node(1)));
        lookup.on_reply(
            &node(1),
            Ok(LookupStep::Ask {
                candidates: vec![node(40), node(30)],
            }),
        );
        assert_eq!(lookup.next_action(), LookupAction::Query(node(40)));
        lookup.on_reply(&node(40), Err(Unreachable));
        assert_eq!(lookup.next_action(), LookupAction::Query(node(30)));
        lookup.on_reply(
            &node(30),
            Ok(LookupStep::Done {
                owner: node(55),
                fallbacks: vec![node(60)],
            }),
        );
        assert_eq!(lookup.next_action(), LookupAction::Query(node(55)));
        lookup.on_reply(&node(55), Err(Unreachable));
        assert_eq!(lookup.next_action(), LookupAction::Query(node(60)));
        lookup.on_reply(&node(60), Ok(LookupStep::Ask { candidates: vec![] }));
        let expected = LookupResult {
            owner: node(60),
            hops: 2,
            timeouts: 2,
        };
        assert_eq!(lookup.next_action(), LookupAction::Finished(Ok(expected)));
    }

    #[test]
    fn exhausted_when_nobody_answers() {
        let mut lookup = Lookup::via(7, node(1));
        assert_eq!(lookup.next_action(), LookupAction::Query(node(1)));
        lookup.on_reply(&node(1), Err(Unreachable));
        assert_eq!(
            lookup.next_action(),
            LookupAction::Finished(Err(LookupError::Exhausted { key: 7 }))
        );
    }

    #[test]
    fn query_budget_is_enforced() {
        // Goal: a peer that always answers "ask me again" cannot keep a lookup alive.
        let mut lookup = Lookup::via(7, node(1));
        for _ in 0..LOOKUP_QUERIES_MAX {
            match lookup.next_action() {
                LookupAction::Query(asked) => lookup.on_reply(
                    &asked,
                    Ok(LookupStep::Ask {
                        candidates: vec![node(1)],
                    }),
                ),
                LookupAction::Finished(result) => panic!("finished early: {result:?}"),
            }
        }
        assert_eq!(
            lookup.next_action(),
            LookupAction::Finished(Err(LookupError::QueriesExceeded { key: 7 }))
        );
    }
}
