//! Where a key lives: its replica set is the first `replicas` live nodes clockwise
//! from the key; the first of them (the key's successor) coordinates it.

use cm_ring::{IdSpace, NodeRef};
use cm_types::RingKey;

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
