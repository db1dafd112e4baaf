//! The Chord ring of chordmail: membership and routing as a sans-IO state machine.
//!
//! This crate holds everything a node believes about the ring (predecessor, successor
//! list, finger table, remembered peers) and every rule that changes it: Zave's
//! corrected Chord (join, stabilize with reconcile/update/flush, notify/rectify), plus
//! check_predecessor, fix_fingers, fix_successors, graceful leave, iterative lookups that
//! route around dead nodes, and partition healing by probing remembered peers.
//! `DEVIATIONS.md` beside this crate says where and why it departs from Zave.
//!
//! What it deliberately is not: it has no sockets, no tokio, no clock and no randomness.
//! It does not persist anything and stores no keys. Every operation that needs another
//! node is split into *plan* (a method saying whom to call), the call itself (made by
//! the caller), and *apply* (a method taking the answer). So the tokio/gRPC driver
//! (`cm-net`) and the deterministic simulation ([`sim`], test builds and the `sim`
//! feature) run the same logic.
//!
//! Reading order:
//! - [`id`]: [`IdSpace`], the arithmetic of the `2^bits` circle (intervals, distance,
//!   finger starts).
//! - [`node`]: [`Node`] and its messages: [`NodeRef`], [`RemoteState`], [`LeaveNotice`],
//!   [`Effect`], [`RingConfig`], the admin view [`RingView`], and the errors
//!   [`JoinError`] and [`ConfigError`].
//! - [`lookup`]: [`LookupStep`] (one node's answer) and [`Lookup`] (the asking side,
//!   which routes around [`Unreachable`] nodes).
//! - [`sim`]: seeded simulation of many nodes, with Zave's invariant and convergence checks.
//!
//! # Driver contract
//!
//! The driver keeps the [`Node`] behind a lock and never holds the lock across a call:
//! plan under the lock, release it, make the call, lock again, apply. Every apply step
//! accepts a stale answer (the state moved on meanwhile) and ignores it. Every remote
//! call has a deadline (a `RING_RPC_TIMEOUT` of about 1 s on a LAN). An error or a
//! missed deadline is fed in as [`Unreachable`], and the ring never retries by itself.
//!
//! Served to other nodes (one RPC each):
//! - `get_state` answers [`Node::remote_state`]; `next_hop(key)` answers [`Node::next_hop`];
//!   `ping` answers `()`.
//! - `notify(candidate)` runs [`Node::on_notify`]. Its `predecessor_alive` is the driver's
//!   current belief about our predecessor, such as the last check_predecessor outcome.
//!   Pinging from inside the handler is not required.
//! - `leave(notice)` runs [`Node::on_leave_notice`] and handles the effects it returns.
//!
//! Periodic tasks, each on its own timer (suggested defaults for a LAN in brackets):
//! - stabilize [500 ms]: [`Node::stabilize_target`], `get_state`, then
//!   [`Node::apply_stabilize`]. Handle the returned [`Effect`]s in order:
//!   `Notify` sends `notify(me)`, whose error is ignored. `QueryCandidate` runs
//!   `get_state`, then [`Node::apply_stabilize_candidate`]. `StabilizeAgain` starts
//!   another stabilize at once. Every `StabilizeAgain` follows the removal of a dead
//!   node, so one round produces at most `2·(s + bits + 1) + 2` effects. Assert that bound.
//! - check_predecessor [1 s]: [`Node::check_predecessor_target`], `ping`, then
//!   [`Node::apply_check_predecessor`].
//! - fix_successors [500 ms]: [`Node::fix_successors_target`], `get_state`, then
//!   [`Node::apply_fix_successors`].
//! - fix_fingers [500 ms]: [`Node::fix_fingers_target`] gives a [`FingerRequest`]. Run
//!   the lookup from [`Node::start_lookup`]`(start)` and pass its outcome to
//!   [`Node::apply_fix_finger`].
//! - probe [5 s]: [`Node::probe_target`] names a remembered peer. Run
//!   [`Lookup::via`]`(`[`Node::probe_key`]`, peer)`, then [`Node::apply_probe`], and handle
//!   the `Notify` it may return. Persist [`Node::remembered_peers`] in `--data` every now
//!   and then, and at shutdown.
//!
//! A lookup: loop on [`Lookup::next_action`]. On `Query(node)`, call `next_hop(key)` on
//! that node with a deadline and feed the answer to [`Lookup::on_reply`]. Stop on
//! `Finished`. A lookup makes at most [`LOOKUP_QUERIES_MAX`] calls. A caller that needs
//! an overall deadline (an SMTP transaction, say) wraps the whole loop in one.
//!
//! Start-up:
//! - Without `--entry-addr`, call [`Node::new_ring`] with the remembered peers from
//!   `--data`, if any.
//! - With an entry node, call `get_state` on the entry address to learn its id. Run
//!   [`Lookup::via`]`(my_id, entry)`, then [`choose_join_successor`]:
//!   - `Err(IdTaken)`: refuse to start (exit 1, naming the holder).
//!   - `Ok(None)`: run [`Lookup::via`]`(my_id + 1, entry)` and use its owner.
//!   - Otherwise, call `get_state` on the successor, then [`Node::join`], passing the
//!     entry node among the remembered peers.
//! - A restart with the same `--data` joins the same way through its remembered peers.
//!   If none answers, it starts with [`Node::new_ring`], and probing merges it back later.
//!
//! Shutdown: send each of [`Node::leave_notices`] as a `leave` call (with a deadline,
//! best effort), then stop serving.

pub mod id;
pub mod lookup;
pub mod node;
pub mod node_ref;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use id::IdSpace;
pub use lookup::{LOOKUP_QUERIES_MAX, Lookup, LookupAction, LookupError, LookupResult, LookupStep};
pub use node::{
    ConfigError, Effect, Finger, FingerRequest, JoinError, LeaveNotice, Node, REMEMBERED_PEERS_MAX,
    RemoteState, RingConfig, RingView, SUCCESSOR_LIST_LEN_DEFAULT, SUCCESSOR_LIST_LEN_MAX,
    choose_join_successor,
};
pub use node_ref::{NodeRef, Unreachable};
