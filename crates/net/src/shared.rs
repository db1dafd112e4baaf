//! The state the ring server, the maintenance tasks and every `RingHandle` share:
//! this node's sans-IO `cm_ring::Node` behind a mutex, its channels to peers, and
//! the maintenance steps that carry the node's plans over the network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use cm_ring::{Effect, Lookup, LookupAction, LookupError, LookupResult, Node, NodeRef};

use crate::peers::Peers;

/// Stabilize rounds run back to back at most when successors keep turning out dead.
const STABILIZE_RETRIES_MAX: usize = cm_ring::SUCCESSOR_LIST_LEN_MAX;
/// Fingers refreshed per fix_fingers period.
const FINGERS_PER_ROUND: usize = 4;

/// State shared by the server, the maintenance tasks and [`RingHandle`]s.
pub struct Shared {
    /// A std `Mutex`: every critical section is a few field updates, never an await.
    pub(crate) node: Mutex<Node>,
    pub(crate) peers: Peers,
    /// The last check_predecessor outcome, the failure detector `on_notify` consults.
    pub(crate) predecessor_alive: AtomicBool,
    /// Whether the ring port runs mutual TLS, so that claimed addresses are checked.
    pub(crate) tls_on: bool,
}

impl Shared {
    pub(crate) fn node(&self) -> MutexGuard<'_, Node> {
        self.node.lock().expect("ring node mutex poisoned")
    }

    pub(crate) fn predecessor_alive(&self) -> bool {
        self.predecessor_alive.load(Ordering::Relaxed)
    }

    pub(crate) fn me(&self) -> NodeRef {
        self.node().me().clone()
    }

    /// Carries out what an apply step asked for; follow-up effects included, bounded.
    pub(crate) async fn run_effects(&self, mut effects: Vec<Effect>) {
        let me = self.me();
        for _ in 0..STABILIZE_RETRIES_MAX {
            let mut next = Vec::new();
            for effect in effects {
                match effect {
                    Effect::Notify { to } => {
                        let _ = self.peers.notify(&to, &me).await;
                    }
                    Effect::QueryCandidate { candidate } => {
                        let reply = self.peers.get_state(&candidate.addr).await;
                        next.extend(self.node().apply_stabilize_candidate(&candidate, reply));
                    }
                    Effect::StabilizeAgain => next.extend(self.stabilize_once().await),
                }
            }
            if next.is_empty() {
                return;
            }
            effects = next;
        }
    }

    pub(crate) async fn stabilize_once(&self) -> Vec<Effect> {
        let Some(target) = self.node().stabilize_target() else {
            return Vec::new();
        };
        let reply = self.peers.get_state(&target.addr).await;
        self.node().apply_stabilize(&target, reply)
    }

    pub(crate) async fn stabilize(&self) {
        let effects = self.stabilize_once().await;
        self.run_effects(effects).await;
    }

    pub(crate) async fn check_predecessor(&self) {
        let Some(target) = self.node().check_predecessor_target() else {
            return;
        };
        let reply = self.peers.get_state(&target.addr).await.and_then(|state| {
            if state.node == target {
                Ok(())
            } else {
                Err(cm_ring::Unreachable)
            }
        });
        self.predecessor_alive
            .store(reply.is_ok(), Ordering::Relaxed);
        self.node().apply_check_predecessor(&target, reply);
    }

    pub(crate) async fn fix_successors(&self) {
        let Some(target) = self.node().fix_successors_target() else {
            return;
        };
        let reply = self.peers.get_state(&target.addr).await;
        self.node().apply_fix_successors(&target, reply);
    }

    pub(crate) async fn fix_fingers(&self) {
        for _ in 0..FINGERS_PER_ROUND {
            let Some(request) = self.node().fix_fingers_target() else {
                return;
            };
            let lookup = self.node().start_lookup(request.start);
            let outcome = self.drive(lookup).await;
            self.node().apply_fix_finger(request, outcome);
        }
    }

    pub(crate) async fn probe(&self) {
        let Some(peer) = self.node().probe_target() else {
            return;
        };
        let key = self.node().probe_key();
        let outcome = self.drive(Lookup::via(key, peer.clone())).await;
        let successor_before = self.node().successor().clone();
        let effects = self.node().apply_probe(outcome);
        let successor_after = self.node().successor().clone();
        if successor_after != successor_before {
            // A probe changes our successor only when it found a closer node outside
            // our view: another ring after a healed partition, or a node we missed.
            tracing::info!(peer = %peer.addr, successor = %successor_after.addr, "probe found a closer successor; merging rings");
        }
        self.run_effects(effects).await;
    }

    /// Runs an iterative lookup to its end; queries to ourselves are answered locally.
    pub(crate) async fn drive(&self, mut lookup: Lookup) -> Result<LookupResult, LookupError> {
        let me = self.me();
        loop {
            match lookup.next_action() {
                LookupAction::Finished(outcome) => return outcome,
                LookupAction::Query(target) => {
                    let reply = if target == me {
                        Ok(self.node().next_hop(lookup.key()))
                    } else {
                        self.peers.next_hop(&target, lookup.key()).await
                    };
                    lookup.on_reply(&target, reply);
                }
            }
        }
    }
}
