//! Where a key lives: its replica set is the first `replicas` live nodes clockwise
//! from the key; the first of them (the key's successor) coordinates it.
//! [`RingMembers`] computes it from this node's view of the ring (the pure
//! functions below) and hands out the member on each node.

use std::sync::Arc;

use cm_net::RingHandle;
use cm_ring::{IdSpace, NodeRef};
use cm_types::RingKey;

use crate::MailError;
use crate::local::LocalReplica;
use crate::remote::RemoteReplica;
use crate::replica::{Members, Replica};

/// The members of replica sets on a running ring.
pub struct RingMembers {
    pub(crate) ring: RingHandle,
    pub(crate) local: Arc<LocalReplica>,
    pub(crate) space: IdSpace,
    pub(crate) replicas: usize,
    /// The successor list length of the ring, to tell when it spans the whole ring.
    pub(crate) successor_list_len: usize,
}

#[tonic::async_trait]
impl Members for RingMembers {
    fn me(&self) -> NodeRef {
        self.ring.me()
    }

    /// From this node's own successor list when it covers the key, else by a lookup
    /// of the key's coordinator and that node's successor list.
    async fn replica_set(&self, key: RingKey) -> Result<Vec<NodeRef>, MailError> {
        let ring = &self.ring;
        let mut chain = vec![ring.me()];
        let successors = ring.successors();
        let alone = successors
            .first()
            .is_none_or(|first| first.id == chain[0].id);
        if !alone {
            chain.extend(successors.iter().cloned());
        }
        let whole_ring = alone || successors.len() < self.successor_list_len;
        let predecessor = ring.predecessor();
        if let Some(set) = local_replica_set(
            self.space,
            &chain,
            predecessor.as_ref(),
            whole_ring,
            key,
            self.replicas,
        ) {
            return Ok(set);
        }
        let owner = ring
            .lookup(key)
            .await
            .map_err(|error| MailError::Unavailable(error.to_string()))?
            .owner;
        let state = ring.peers().get_state(&owner.addr).await.map_err(|_| {
            MailError::Unavailable(format!("coordinator {} does not answer", owner.addr))
        })?;
        Ok(replica_set_from_owner(
            &owner,
            &state.successors,
            self.replicas,
        ))
    }

    async fn cluster(&self) -> Vec<NodeRef> {
        self.ring.cluster().await
    }

    fn member(&self, node: &NodeRef) -> Arc<dyn Replica> {
        let is_me = node.id == self.ring.me().id;
        if is_me {
            self.local.clone()
        } else {
            Arc::new(RemoteReplica::new(self.ring.clone(), node.clone()))
        }
    }
}

/// The replica set of `key` computed from this node's own neighbourhood, without a
/// network call, when that neighbourhood covers it: `chain` is this node followed by
/// its successor list, and `whole_ring` says the list wraps all the way round (it is
/// shorter than its configured length, or the node is alone). `None` when the key's
/// replicas lie beyond what this node knows; then a lookup is needed.
pub fn local_replica_set(
    space: IdSpace,
    chain: &[NodeRef],
    predecessor: Option<&NodeRef>,
    whole_ring: bool,
    key: RingKey,
    replicas: usize,
) -> Option<Vec<NodeRef>> {
    assert!(!chain.is_empty() && replicas > 0);
    let me = &chain[0];
    let owner_idx = if key == me.id
        || predecessor.is_some_and(|p| space.between_open_closed(p.id, key, me.id))
    {
        Some(0)
    } else {
        (1..chain.len())
            .find(|&idx| space.between_open_closed(chain[idx - 1].id, key, chain[idx].id))
    };
    let owner_idx = match owner_idx {
        Some(idx) => idx,
        None if whole_ring => 0,
        None => return None,
    };
    let n_members = replicas.min(chain.len());
    if !whole_ring && owner_idx + n_members > chain.len() {
        return None;
    }
    Some(
        (0..n_members)
            .map(|offset| chain[(owner_idx + offset) % chain.len()].clone())
            .collect(),
    )
}

/// The replica set from the key's owner and the owner's successor list.
pub fn replica_set_from_owner(
    owner: &NodeRef,
    owner_successors: &[NodeRef],
    replicas: usize,
) -> Vec<NodeRef> {
    let mut set = vec![owner.clone()];
    for node in owner_successors {
        if set.len() == replicas || set.iter().any(|member| member.id == node.id) {
            break;
        }
        set.push(node.clone());
    }
    set
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

    fn ids(set: &[NodeRef]) -> Vec<u64> {
        set.iter().map(|node| node.id).collect()
    }

    #[test]
    fn a_small_ring_is_placed_locally_with_wrap_around() {
        let space = IdSpace::new(6);
        let chain = [node(10), node(20), node(30), node(40)];
        let predecessor = node(40);
        let set = |key| {
            local_replica_set(space, &chain, Some(&predecessor), true, key, 3).map(|set| ids(&set))
        };
        assert_eq!(set(10), Some(vec![10, 20, 30]));
        assert_eq!(
            set(5),
            Some(vec![10, 20, 30]),
            "wraps past zero to our own range"
        );
        assert_eq!(set(45), Some(vec![10, 20, 30]));
        assert_eq!(set(11), Some(vec![20, 30, 40]));
        assert_eq!(set(35), Some(vec![40, 10, 20]));
    }

    #[test]
    fn beyond_a_partial_list_a_lookup_is_needed() {
        let space = IdSpace::new(8);
        let chain = [node(10), node(20), node(30), node(40)];
        let set = |key, replicas| {
            local_replica_set(space, &chain, None, false, key, replicas).map(|set| ids(&set))
        };
        assert_eq!(set(15, 3), Some(vec![20, 30, 40]));
        assert_eq!(set(25, 3), None, "40's successors are unknown here");
        assert_eq!(set(200, 1), None, "outside (10, 40] and no predecessor");
    }

    #[test]
    fn a_lone_node_holds_everything_and_small_rings_give_small_sets() {
        let space = IdSpace::new(64);
        let alone = [node(7)];
        assert_eq!(
            local_replica_set(space, &alone, None, true, 123, 3).map(|set| ids(&set)),
            Some(vec![7])
        );
        let owner_set = replica_set_from_owner(&node(5), &[node(9), node(2), node(5)], 5);
        assert_eq!(ids(&owner_set), vec![5, 9, 2]);
    }
}
