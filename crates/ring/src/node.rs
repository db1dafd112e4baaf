//! One ring member's state and every maintenance operation on it, each shaped as
//! plan → (I/O by the caller) → apply.

use cm_types::RingKey;
use serde::{Deserialize, Serialize};

use crate::id::IdSpace;
use crate::lookup::{Lookup, LookupError, LookupResult, LookupStep};
use crate::node_ref::{NodeRef, Unreachable};

/// The longest successor list a node keeps.
pub const SUCCESSOR_LIST_LEN_MAX: usize = 64;
/// The successor list length when the configuration does not say; with
/// `2·log2 N` as the usual rule of thumb, it suits rings of up to 16 nodes.
pub const SUCCESSOR_LIST_LEN_DEFAULT: usize = 8;
/// The most peers a node remembers for partition healing.
pub const REMEMBERED_PEERS_MAX: usize = 64;

const _: () = assert!(SUCCESSOR_LIST_LEN_DEFAULT <= SUCCESSOR_LIST_LEN_MAX);
const _: () = assert!(REMEMBERED_PEERS_MAX >= SUCCESSOR_LIST_LEN_MAX);

/// What a node answers when asked for its state (for stabilize, fix_successors and
/// the stabilize candidate check).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteState {
    /// The answering node, so the caller can tell that the address still holds the id
    /// it expected.
    pub node: NodeRef,
    pub predecessor: Option<NodeRef>,
    pub successors: Vec<NodeRef>,
}

/// Sent by a node that leaves gracefully to its predecessor and its successor, so they
/// repair at once instead of after a failure timeout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveNotice {
    pub leaving: NodeRef,
    pub predecessor: Option<NodeRef>,
    pub successors: Vec<NodeRef>,
}

/// Follow-up work an apply step asks of the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Call `notify(self)` on `to`; the remote side runs [`Node::on_notify`]. The
    /// answer carries nothing, and an error is ignored (stabilize will notice).
    Notify { to: NodeRef },
    /// Fetch `candidate`'s [`RemoteState`] and feed it to
    /// [`Node::apply_stabilize_candidate`].
    QueryCandidate { candidate: NodeRef },
    /// The successor was dead and was dropped: run another stabilize round now, so the
    /// next live successor is adopted and notified without waiting a period.
    StabilizeAgain,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("id {} is already held by the node at {}; choose another --id", holder.id, holder.addr)]
    IdTaken { holder: NodeRef },
    #[error(
        "the entry node named no live successor for our id; try again or use another entry node"
    )]
    NoSuccessor,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("bits must be in 1..=64, got {0}")]
    Bits(u32),
    #[error(
        "successor list length must be in {replicas}..={SUCCESSOR_LIST_LEN_MAX} (at least --replicas), got {len}"
    )]
    SuccessorListLen { len: usize, replicas: usize },
    #[error("node id {id} does not fit in {bits} bits")]
    IdOutOfSpace { id: RingKey, bits: u32 },
}

/// The ring parameters every member must agree on, plus this node's list length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    pub bits: u32,
    /// `s`, the successor list length; at least the number of replicas, so that a
    /// node's list names every replica of the keys it coordinates.
    pub successor_list_len: usize,
    pub replicas: usize,
}

impl RingConfig {
    pub fn new(bits: u32, replicas: usize) -> RingConfig {
        RingConfig {
            bits,
            successor_list_len: SUCCESSOR_LIST_LEN_DEFAULT.max(replicas),
            replicas,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=cm_types::RING_BITS_MAX).contains(&self.bits) {
            return Err(ConfigError::Bits(self.bits));
        }
        let len = self.successor_list_len;
        if len == 0 || len < self.replicas || len > SUCCESSOR_LIST_LEN_MAX {
            return Err(ConfigError::SuccessorListLen {
                len,
                replicas: self.replicas,
            });
        }
        Ok(())
    }
}

/// One finger of the admin view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finger {
    pub start: RingKey,
    pub id: RingKey,
    pub addr: String,
}

/// This node's view of the ring, as `GET /api/ring` shows it (docs/DESIGN.md §8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RingView {
    pub id: RingKey,
    pub addr: String,
    pub predecessor: Option<NodeRef>,
    pub successors: Vec<NodeRef>,
    pub fingers: Vec<Finger>,
}

/// A finger that needs a lookup: the driver runs `lookup(start)` from this node
/// ([`Node::start_lookup`]) and feeds the outcome to [`Node::apply_fix_finger`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FingerRequest {
    pub finger_idx: u32,
    pub start: RingKey,
}

/// One ring member: identity, predecessor, successor list, finger table and the peers
/// it remembers. It performs no I/O; see the crate documentation for the driver contract.
#[derive(Clone, Debug)]
pub struct Node {
    space: IdSpace,
    config: RingConfig,
    me: NodeRef,
    predecessor: Option<NodeRef>,
    /// Never empty. `[me]` exactly when the node believes it is alone; otherwise the
    /// entries are strictly increasing in clockwise distance from `me`, never `me`.
    successors: Vec<NodeRef>,
    /// `fingers[i]` is believed to be the successor of `me + 2^i`; `None` while unknown
    /// and for fingers that would point at `me`.
    fingers: Vec<Option<NodeRef>>,
    next_finger_idx: u32,
    next_successor_idx: usize,
    remembered: Vec<NodeRef>,
    remembered_insert_cursor: usize,
    next_probe_idx: usize,
}

impl Node {
    /// Starts a new ring of one node (`chordmail node` without `--entry-addr`).
    /// `remembered` are peers from an earlier life, probed to merge back into their ring.
    pub fn new_ring(
        config: RingConfig,
        me: NodeRef,
        remembered: Vec<NodeRef>,
    ) -> Result<Node, ConfigError> {
        config.validate()?;
        let space = IdSpace::new(config.bits);
        if !space.contains(me.id) {
            return Err(ConfigError::IdOutOfSpace {
                id: me.id,
                bits: config.bits,
            });
        }
        let mut node = Node {
            space,
            config,
            predecessor: None,
            successors: vec![me.clone()],
            fingers: vec![None; config.bits as usize],
            me,
            next_finger_idx: 0,
            next_successor_idx: 1,
            remembered: Vec::new(),
            remembered_insert_cursor: 0,
            next_probe_idx: 0,
        };
        for peer in remembered {
            node.remember(&peer);
        }
        node.assert_invariants();
        Ok(node)
    }

    /// Joins a ring (Zave's join): `successor` is the state of the node a lookup of our
    /// id named (see [`choose_join_successor`]). The predecessor stays unknown until
    /// some node notifies us; stabilize integrates us into the ring.
    pub fn join(
        config: RingConfig,
        me: NodeRef,
        successor: RemoteState,
        remembered: Vec<NodeRef>,
    ) -> Result<Node, JoinError> {
        if successor.node.id == me.id {
            return Err(JoinError::IdTaken {
                holder: successor.node,
            });
        }
        let mut node =
            Node::new_ring(config, me, remembered).expect("configuration validated by the caller");
        node.learn_state(&successor);
        node.successors = node.reconcile(&successor.node, &successor.successors);
        node.assert_invariants();
        Ok(node)
    }

    pub fn me(&self) -> &NodeRef {
        &self.me
    }

    pub fn space(&self) -> IdSpace {
        self.space
    }

    pub fn config(&self) -> RingConfig {
        self.config
    }

    pub fn successor(&self) -> &NodeRef {
        &self.successors[0]
    }

    pub fn successors(&self) -> &[NodeRef] {
        &self.successors
    }

    pub fn predecessor(&self) -> Option<&NodeRef> {
        self.predecessor.as_ref()
    }

    pub fn fingers(&self) -> &[Option<NodeRef>] {
        &self.fingers
    }

    /// Peers to keep in `--data` across restarts, for partition healing.
    pub fn remembered_peers(&self) -> &[NodeRef] {
        &self.remembered
    }

    /// Whether this node believes it is alone in its ring.
    pub fn is_alone(&self) -> bool {
        self.successors[0] == self.me
    }

    /// The answer to a remote `get_state` call.
    pub fn remote_state(&self) -> RemoteState {
        RemoteState {
            node: self.me.clone(),
            predecessor: self.predecessor.clone(),
            successors: self.successors.clone(),
        }
    }

    pub fn view(&self) -> RingView {
        let fingers = (0..self.space.bits())
            .filter_map(|finger_idx| {
                let finger = self.fingers[finger_idx as usize].as_ref()?;
                let start = self.space.finger_start(self.me.id, finger_idx);
                Some(Finger {
                    start,
                    id: finger.id,
                    addr: finger.addr.clone(),
                })
            })
            .collect();
        RingView {
            id: self.me.id,
            addr: self.me.addr.clone(),
            predecessor: self.predecessor.clone(),
            // A one-node ring lists itself, as Chord defines its successor.
            successors: self.successors.clone(),
            fingers,
        }
    }

    // ----- stabilize, notify (Zave's stabilize, reconcile, update, flush, rectify) -----

    /// Whom to ask for its state in this stabilize round; `None` for a lone node with
    /// nobody to talk to.
    pub fn stabilize_target(&mut self) -> Option<NodeRef> {
        if self.is_alone() {
            // Deviation from Zave (one-node bootstrap): a lone node that was notified
            // takes its predecessor as successor; the reply to this round verifies it.
            let predecessor = self.predecessor.clone()?;
            self.successors = vec![predecessor];
            self.assert_invariants();
        }
        Some(self.successors[0].clone())
    }

    /// Applies the answer of the stabilize target.
    pub fn apply_stabilize(
        &mut self,
        target: &NodeRef,
        reply: Result<RemoteState, Unreachable>,
    ) -> Vec<Effect> {
        if self.successors[0] != *target || self.is_alone() {
            // The list changed while the call was in flight; this answer is stale.
            return Vec::new();
        }
        let state = match reply {
            Ok(state) if state.node == *target => state,
            _ => {
                // Zave's flush: drop the dead successor; the next round uses the next one.
                self.forget_dead(target);
                self.assert_invariants();
                return if self.is_alone() {
                    Vec::new()
                } else {
                    vec![Effect::StabilizeAgain]
                };
            }
        };
        self.learn_state(&state);
        // Zave's reconcile: our list is the successor followed by its list.
        self.successors = self.reconcile(target, &state.successors);
        self.assert_invariants();
        match state.predecessor {
            Some(candidate)
                if candidate != self.me
                    && self.space.between_open(self.me.id, candidate.id, target.id) =>
            {
                // Zave's update: adopt the closer node only after it proved alive.
                vec![Effect::QueryCandidate { candidate }]
            }
            _ => vec![Effect::Notify { to: target.clone() }],
        }
    }

    /// Applies the answer of a stabilize candidate (the successor's predecessor).
    pub fn apply_stabilize_candidate(
        &mut self,
        candidate: &NodeRef,
        reply: Result<RemoteState, Unreachable>,
    ) -> Vec<Effect> {
        if let Ok(state) = reply
            && state.node == *candidate
            && !self.is_alone()
            && self
                .space
                .between_open(self.me.id, candidate.id, self.successors[0].id)
        {
            self.learn_state(&state);
            self.successors = self.reconcile(candidate, &state.successors);
            self.assert_invariants();
        }
        if self.is_alone() {
            Vec::new()
        } else {
            vec![Effect::Notify {
                to: self.successors[0].clone(),
            }]
        }
    }

    /// `candidate` believes it is our predecessor (Zave's rectify). `predecessor_alive`
    /// is whether our current predecessor answers; the driver may pass its failure
    /// detector's latest belief (the last check_predecessor outcome) instead of pinging.
    pub fn on_notify(&mut self, candidate: NodeRef, predecessor_alive: bool) {
        if candidate.id == self.me.id {
            return;
        }
        self.remember(&candidate);
        let adopt = match &self.predecessor {
            None => true,
            Some(current) => {
                !predecessor_alive
                    || self
                        .space
                        .between_open(current.id, candidate.id, self.me.id)
            }
        };
        if adopt {
            self.predecessor = Some(candidate);
        }
    }

    // ----- check_predecessor -----

    pub fn check_predecessor_target(&self) -> Option<NodeRef> {
        self.predecessor.clone()
    }

    /// A predecessor that does not answer is cleared, so the next notify is adopted.
    pub fn apply_check_predecessor(&mut self, target: &NodeRef, reply: Result<(), Unreachable>) {
        if reply.is_err() && self.predecessor.as_ref() == Some(target) {
            self.predecessor = None;
        }
    }

    // ----- fix_successors -----

    /// The successor-list entry to refresh this period (round robin over all but the
    /// first, which stabilize refreshes).
    pub fn fix_successors_target(&mut self) -> Option<NodeRef> {
        if self.successors.len() < 2 {
            return None;
        }
        if self.next_successor_idx >= self.successors.len() || self.next_successor_idx == 0 {
            self.next_successor_idx = 1;
        }
        let target = self.successors[self.next_successor_idx].clone();
        self.next_successor_idx += 1;
        Some(target)
    }

    /// A dead entry is dropped; a live one's list replaces everything after it.
    pub fn apply_fix_successors(
        &mut self,
        target: &NodeRef,
        reply: Result<RemoteState, Unreachable>,
    ) {
        let Some(position) = self.successors.iter().position(|entry| entry == target) else {
            return;
        };
        match reply {
            Ok(state) if state.node == *target => {
                self.learn_state(&state);
                let mut merged = self.successors[..position].to_vec();
                merged.push(target.clone());
                merged.extend(state.successors.iter().cloned());
                self.successors = self.reconcile(&merged[0], &merged[1..]);
            }
            _ => self.forget_dead(target),
        }
        self.assert_invariants();
    }

    // ----- fix_fingers -----

    /// The next finger that needs a lookup. Fingers whose start falls before our first
    /// successor are set locally, so a full table costs about log2 N lookups.
    pub fn fix_fingers_target(&mut self) -> Option<FingerRequest> {
        for _ in 0..self.space.bits() {
            let finger_idx = self.next_finger_idx;
            self.next_finger_idx = (self.next_finger_idx + 1) % self.space.bits();
            let start = self.space.finger_start(self.me.id, finger_idx);
            if self.is_alone() {
                self.fingers[finger_idx as usize] = None;
                continue;
            }
            let successor = &self.successors[0];
            if self
                .space
                .between_open_closed(self.me.id, start, successor.id)
            {
                self.fingers[finger_idx as usize] = Some(successor.clone());
                continue;
            }
            return Some(FingerRequest { finger_idx, start });
        }
        None
    }

    /// Applies a finger lookup; the found node also serves the following fingers whose
    /// start it covers, which are then skipped.
    pub fn apply_fix_finger(
        &mut self,
        request: FingerRequest,
        outcome: Result<LookupResult, LookupError>,
    ) {
        let Ok(found) = outcome else {
            return;
        };
        let owner = found.owner;
        if owner.id == self.me.id {
            self.fingers[request.finger_idx as usize] = None;
            return;
        }
        self.remember(&owner);
        let owner_distance = self.space.distance(self.me.id, owner.id);
        let mut finger_idx = request.finger_idx;
        while finger_idx < self.space.bits() {
            let start = self.space.finger_start(self.me.id, finger_idx);
            let start_distance = self.space.distance(self.me.id, start);
            if finger_idx != request.finger_idx && start_distance > owner_distance {
                break;
            }
            self.fingers[finger_idx as usize] = Some(owner.clone());
            finger_idx += 1;
        }
        self.next_finger_idx = finger_idx % self.space.bits();
    }

    // ----- lookups -----

    /// One step of `find_successor(key)` as this node sees it.
    pub fn next_hop(&self, key: RingKey) -> LookupStep {
        if self.is_alone() || key == self.me.id {
            let fallbacks = if self.is_alone() {
                Vec::new()
            } else {
                self.successors.clone()
            };
            return LookupStep::Done {
                owner: self.me.clone(),
                fallbacks,
            };
        }
        for (successor_idx, successor) in self.successors.iter().enumerate() {
            if self
                .space
                .between_open_closed(self.me.id, key, successor.id)
            {
                let fallbacks = self.successors[successor_idx + 1..].to_vec();
                return LookupStep::Done {
                    owner: successor.clone(),
                    fallbacks,
                };
            }
        }
        LookupStep::Ask {
            candidates: self.closest_preceding_nodes(key),
        }
    }

    /// Every known node strictly between us and `key`, closest to the key first: the
    /// best finger, then the other fingers and successors as fallbacks.
    pub fn closest_preceding_nodes(&self, key: RingKey) -> Vec<NodeRef> {
        let mut candidates: Vec<NodeRef> = self
            .fingers
            .iter()
            .flatten()
            .chain(self.successors.iter())
            .filter(|node| self.space.between_open(self.me.id, node.id, key))
            .cloned()
            .collect();
        candidates.sort_by_key(|node| std::cmp::Reverse(self.space.distance(self.me.id, node.id)));
        candidates.dedup_by_key(|node| node.id);
        candidates
    }

    /// A lookup of `key` starting here; its first step costs no I/O.
    pub fn start_lookup(&self, key: RingKey) -> Lookup {
        let step = self.next_hop(key);
        if let LookupStep::Done { owner, .. } = &step
            && *owner == self.me
        {
            return Lookup::from_local_step(
                key,
                LookupStep::Done {
                    owner: owner.clone(),
                    fallbacks: Vec::new(),
                },
            );
        }
        Lookup::from_local_step(key, step)
    }

    // ----- leave -----

    /// The notices to send (best effort, with a deadline) before shutting down.
    pub fn leave_notices(&self) -> Vec<(NodeRef, LeaveNotice)> {
        let notice = LeaveNotice {
            leaving: self.me.clone(),
            predecessor: self.predecessor.clone(),
            successors: self.successors.clone(),
        };
        let mut recipients: Vec<NodeRef> = Vec::new();
        for recipient in self.predecessor.iter().chain(self.successors.first()) {
            if *recipient != self.me && !recipients.contains(recipient) {
                recipients.push(recipient.clone());
            }
        }
        recipients
            .into_iter()
            .map(|recipient| (recipient, notice.clone()))
            .collect()
    }

    /// A neighbour is leaving: splice it out of the predecessor and the successor list.
    pub fn on_leave_notice(&mut self, notice: LeaveNotice) -> Vec<Effect> {
        let leaving = notice.leaving;
        if leaving.id == self.me.id {
            return Vec::new();
        }
        if self.predecessor.as_ref() == Some(&leaving) {
            self.predecessor = notice
                .predecessor
                .filter(|predecessor| predecessor.id != self.me.id);
        }
        self.forget_finger(&leaving);
        let Some(position) = self.successors.iter().position(|entry| *entry == leaving) else {
            return Vec::new();
        };
        let mut merged = self.successors[..position].to_vec();
        merged.extend(
            notice
                .successors
                .into_iter()
                .filter(|entry| *entry != leaving),
        );
        self.successors = match merged.split_first() {
            Some((first, rest)) if first.id != self.me.id => self.reconcile(first, rest),
            _ => vec![self.me.clone()],
        };
        if self.is_alone() {
            self.fall_back_from_empty_list();
        }
        self.assert_invariants();
        if position == 0 && !self.is_alone() {
            vec![Effect::Notify {
                to: self.successors[0].clone(),
            }]
        } else {
            Vec::new()
        }
    }

    // ----- partition healing -----

    /// The remembered peer to probe this period (round robin). The driver runs
    /// `Lookup::via(node.probe_key(), peer)` and feeds the outcome to [`Node::apply_probe`].
    pub fn probe_target(&mut self) -> Option<NodeRef> {
        for _ in 0..self.remembered.len() {
            let probe_idx = self.next_probe_idx % self.remembered.len();
            self.next_probe_idx = probe_idx + 1;
            let peer = &self.remembered[probe_idx];
            if peer.id != self.me.id && *peer != self.successors[0] {
                return Some(peer.clone());
            }
        }
        None
    }

    /// The key a probe looks up: the id just after ours, so that the answer is the
    /// node that should follow us, never our own (possibly stale) entry.
    pub fn probe_key(&self) -> RingKey {
        self.me.id.wrapping_add(1) & self.space.id_max()
    }

    /// The peer's ring named `owner` as the successor of our id. If that is closer than
    /// our successor, the peer's ring and ours are interleaved (a healed partition):
    /// adopt it. Either way, notify it: if it belongs to another ring, we lie between
    /// its predecessor there and it, so it adopts us as predecessor and its ring's
    /// stabilization reaches ours too. That is what merges a ring whose members
    /// remember nobody of ours, e.g. a node restarted alone while partitioned. In our
    /// own ring the owner is our successor and the notify is an ordinary one.
    pub fn apply_probe(&mut self, outcome: Result<LookupResult, LookupError>) -> Vec<Effect> {
        let Ok(found) = outcome else {
            return Vec::new();
        };
        let owner = found.owner;
        if owner.id == self.me.id {
            return Vec::new();
        }
        self.remember(&owner);
        if self
            .space
            .between_open(self.me.id, owner.id, self.successors[0].id)
        {
            let previous = if self.is_alone() {
                Vec::new()
            } else {
                self.successors.clone()
            };
            self.successors = self.reconcile(&owner, &previous);
            self.assert_invariants();
        }
        vec![Effect::Notify { to: owner }]
    }

    // ----- helpers -----

    /// `first` followed by `rest`, cut where the clockwise order from us would break
    /// (at ourselves, a repeat, or a wrap past us) and at the configured length.
    fn reconcile(&self, first: &NodeRef, rest: &[NodeRef]) -> Vec<NodeRef> {
        let mut list: Vec<NodeRef> = Vec::with_capacity(self.config.successor_list_len);
        let mut last_distance = 0u64;
        for entry in std::iter::once(first).chain(rest.iter()) {
            let distance = self.space.distance(self.me.id, entry.id);
            if distance <= last_distance || list.len() == self.config.successor_list_len {
                break;
            }
            last_distance = distance;
            list.push(entry.clone());
        }
        if list.is_empty() {
            list.push(self.me.clone());
        }
        list
    }

    /// `dead` did not answer: drop it from the successor list and the fingers.
    fn forget_dead(&mut self, dead: &NodeRef) {
        self.forget_finger(dead);
        if self.predecessor.as_ref() == Some(dead) {
            self.predecessor = None;
        }
        self.successors.retain(|entry| entry != dead);
        if self.successors.is_empty() {
            self.fall_back_from_empty_list();
        }
    }

    fn forget_finger(&mut self, dead: &NodeRef) {
        for finger in self.fingers.iter_mut() {
            if finger.as_ref() == Some(dead) {
                *finger = None;
            }
        }
    }

    /// Deviation from Zave, whose stable base guarantees a live successor: when every
    /// successor is gone, try the nearest finger or the predecessor before declaring
    /// ourselves alone (a lone node still merges back through its remembered peers).
    fn fall_back_from_empty_list(&mut self) {
        let me = self.me.id;
        let nearest = self
            .fingers
            .iter()
            .flatten()
            .chain(self.predecessor.iter())
            .filter(|node| node.id != me)
            .min_by_key(|node| self.space.distance(me, node.id))
            .cloned();
        self.successors = vec![nearest.unwrap_or_else(|| self.me.clone())];
    }

    fn learn_state(&mut self, state: &RemoteState) {
        self.remember(&state.node);
        if let Some(predecessor) = &state.predecessor {
            self.remember(predecessor);
        }
        for successor in &state.successors {
            self.remember(successor);
        }
    }

    /// Adds a peer to the bounded remembered set, overwriting round robin when full,
    /// so that old and new acquaintances both stay represented.
    fn remember(&mut self, peer: &NodeRef) {
        if peer.id == self.me.id || self.remembered.contains(peer) {
            return;
        }
        if self.remembered.len() < REMEMBERED_PEERS_MAX {
            self.remembered.push(peer.clone());
        } else {
            let slot = self.remembered_insert_cursor % REMEMBERED_PEERS_MAX;
            self.remembered[slot] = peer.clone();
            self.remembered_insert_cursor = slot + 1;
        }
    }

    /// The local invariants of the ring: the successor list is ordered, has no
    /// duplicates, is no longer than its limit, and names us only when we are alone.
    pub(crate) fn assert_invariants(&self) {
        assert!(
            !self.successors.is_empty(),
            "empty successor list at {}",
            self.me.id
        );
        assert!(self.successors.len() <= self.config.successor_list_len);
        if self.is_alone() {
            assert_eq!(self.successors.len(), 1, "a lone node lists only itself");
        } else {
            let mut last_distance = 0u64;
            for entry in &self.successors {
                let distance = self.space.distance(self.me.id, entry.id);
                assert!(
                    distance > last_distance,
                    "successor list of {} out of order: {:?}",
                    self.me.id,
                    self.successors
                );
                last_distance = distance;
            }
        }
        assert!(
            self.fingers
                .iter()
                .flatten()
                .all(|finger| finger.id != self.me.id)
        );
        assert!(self.remembered.len() <= REMEMBERED_PEERS_MAX);
        assert!(self.remembered.iter().all(|peer| peer.id != self.me.id));
    }

    /// Builds a node with a given, already correct state (simulation set-up).
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn from_parts(
        config: RingConfig,
        me: NodeRef,
        predecessor: Option<NodeRef>,
        successors: Vec<NodeRef>,
        fingers: Vec<Option<NodeRef>>,
    ) -> Node {
        let mut node = Node::new_ring(config, me, Vec::new()).expect("valid simulation config");
        node.predecessor = predecessor;
        node.successors = successors;
        node.fingers = fingers;
        for peer in node.successors.clone() {
            node.remember(&peer);
        }
        node.assert_invariants();
        node
    }
}

/// Decides the join successor from a lookup of our own id made through the entry node.
///
/// `Ok(Some(successor))`: fetch its state and call [`Node::join`]. `Ok(None)`: the ring
/// still lists our previous incarnation (a restart with the same id and address that
/// was not flushed yet); look up `id + 1` through the entry node and use its owner.
pub fn choose_join_successor(
    me: &NodeRef,
    found: &LookupResult,
) -> Result<Option<NodeRef>, JoinError> {
    if found.owner.id != me.id {
        return Ok(Some(found.owner.clone()));
    }
    if found.owner.addr != me.addr {
        return Err(JoinError::IdTaken {
            holder: found.owner.clone(),
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_ref(id: u64) -> NodeRef {
        NodeRef {
            id,
            addr: format!("n{id}"),
        }
    }

    fn config() -> RingConfig {
        RingConfig {
            bits: 6,
            successor_list_len: 3,
            replicas: 2,
        }
    }

    #[test]
    fn config_limits() {
        assert_eq!(
            RingConfig {
                bits: 0,
                ..config()
            }
            .validate(),
            Err(ConfigError::Bits(0))
        );
        assert!(
            RingConfig {
                successor_list_len: 1,
                ..config()
            }
            .validate()
            .is_err()
        );
        assert!(
            RingConfig {
                successor_list_len: 65,
                ..config()
            }
            .validate()
            .is_err()
        );
        assert!(Node::new_ring(config(), node_ref(64), Vec::new()).is_err());
    }

    #[test]
    fn two_nodes_form_a_ring() {
        // Goal: bootstrap from one node; method: run join, notify and stabilize by hand.
        let mut first = Node::new_ring(config(), node_ref(10), Vec::new()).unwrap();
        assert!(first.stabilize_target().is_none());
        let mut second =
            Node::join(config(), node_ref(40), first.remote_state(), Vec::new()).unwrap();
        assert_eq!(second.successor(), &node_ref(10));
        let target = second.stabilize_target().unwrap();
        let effects = second.apply_stabilize(&target, Ok(first.remote_state()));
        assert_eq!(effects, vec![Effect::Notify { to: node_ref(10) }]);
        first.on_notify(node_ref(40), true);
        let target = first.stabilize_target().unwrap();
        assert_eq!(target, node_ref(40));
        let effects = first.apply_stabilize(&target, Ok(second.remote_state()));
        assert_eq!(effects, vec![Effect::Notify { to: node_ref(40) }]);
        second.on_notify(node_ref(10), true);
        assert_eq!(first.successors(), &[node_ref(40)]);
        assert_eq!(second.predecessor(), Some(&node_ref(10)));
        assert_eq!(
            first.next_hop(20),
            LookupStep::Done {
                owner: node_ref(40),
                fallbacks: vec![]
            }
        );
        assert_eq!(
            second.next_hop(20),
            LookupStep::Ask {
                candidates: vec![node_ref(10)]
            }
        );
    }

    #[test]
    fn join_refuses_a_taken_id() {
        let holder = Node::new_ring(config(), node_ref(10), Vec::new()).unwrap();
        let me = NodeRef {
            id: 10,
            addr: "other".to_string(),
        };
        let found = LookupResult {
            owner: holder.me().clone(),
            hops: 1,
            timeouts: 0,
        };
        let expected = Err(JoinError::IdTaken {
            holder: node_ref(10),
        });
        assert_eq!(choose_join_successor(&me, &found), expected);
        assert_eq!(choose_join_successor(&node_ref(10), &found), Ok(None));
        assert!(matches!(
            Node::join(config(), me, holder.remote_state(), Vec::new()),
            Err(JoinError::IdTaken { .. })
        ));
    }

    #[test]
    fn dead_successor_is_flushed_and_the_next_one_used() {
        let successors = vec![node_ref(20), node_ref(30), node_ref(40)];
        let mut node = Node::from_parts(config(), node_ref(10), None, successors, vec![None; 6]);
        let target = node.stabilize_target().unwrap();
        assert_eq!(
            node.apply_stabilize(&target, Err(Unreachable)),
            vec![Effect::StabilizeAgain]
        );
        assert_eq!(node.successor(), &node_ref(30));
    }

    #[test]
    fn reconcile_cuts_at_the_wrap() {
        let node = Node::from_parts(
            config(),
            node_ref(10),
            None,
            vec![node_ref(20)],
            vec![None; 6],
        );
        let list = node.reconcile(&node_ref(20), &[node_ref(5), node_ref(10), node_ref(30)]);
        assert_eq!(list, vec![node_ref(20), node_ref(5)]);
        let list = node.reconcile(&node_ref(20), &[node_ref(30), node_ref(5), node_ref(8)]);
        assert_eq!(list, vec![node_ref(20), node_ref(30), node_ref(5)]);
    }

    #[test]
    fn leave_notice_splices_the_leaver_out() {
        let successors = vec![node_ref(20), node_ref(30), node_ref(40)];
        let mut node = Node::from_parts(
            config(),
            node_ref(10),
            Some(node_ref(5)),
            successors,
            vec![None; 6],
        );
        let notice = LeaveNotice {
            leaving: node_ref(20),
            predecessor: Some(node_ref(10)),
            successors: vec![node_ref(30), node_ref(40), node_ref(50)],
        };
        assert_eq!(
            node.on_leave_notice(notice),
            vec![Effect::Notify { to: node_ref(30) }]
        );
        assert_eq!(
            node.successors(),
            &[node_ref(30), node_ref(40), node_ref(50)]
        );
        let notice = LeaveNotice {
            leaving: node_ref(5),
            predecessor: Some(node_ref(2)),
            successors: vec![],
        };
        node.on_leave_notice(notice);
        assert_eq!(node.predecessor(), Some(&node_ref(2)));
    }

    #[test]
    fn view_serializes_in_the_admin_shape() {
        let node = Node::from_parts(
            config(),
            node_ref(10),
            Some(node_ref(5)),
            vec![node_ref(20)],
            vec![None; 6],
        );
        let view = node.view();
        assert_eq!(view.successors, vec![node_ref(20)]);
        assert!(view.fingers.is_empty());
    }
}
