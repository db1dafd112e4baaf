//! Conversions between the wire messages and the ring's own types.

use cm_ring::{LeaveNotice, LookupStep, NodeRef, RemoteState};

use crate::pb;

impl From<&NodeRef> for pb::NodeRef {
    fn from(node: &NodeRef) -> pb::NodeRef {
        pb::NodeRef {
            id: node.id,
            addr: node.addr.clone(),
        }
    }
}

impl From<pb::NodeRef> for NodeRef {
    fn from(node: pb::NodeRef) -> NodeRef {
        NodeRef {
            id: node.id,
            addr: node.addr,
        }
    }
}

fn nodes(list: &[NodeRef]) -> Vec<pb::NodeRef> {
    list.iter().map(pb::NodeRef::from).collect()
}

fn refs(list: Vec<pb::NodeRef>) -> Vec<NodeRef> {
    list.into_iter().map(NodeRef::from).collect()
}

/// A message without its required node is malformed; the peer is treated as
/// unreachable rather than trusted.
#[derive(Debug)]
pub struct Malformed;

pub fn state_to_pb(state: &RemoteState) -> pb::State {
    pb::State {
        node: Some((&state.node).into()),
        predecessor: state.predecessor.as_ref().map(Into::into),
        successors: nodes(&state.successors),
    }
}

pub fn state_from_pb(state: pb::State) -> Result<RemoteState, Malformed> {
    let node = state.node.ok_or(Malformed)?.into();
    let successors = refs(state.successors);
    if successors.is_empty() {
        return Err(Malformed);
    }
    Ok(RemoteState {
        node,
        predecessor: state.predecessor.map(Into::into),
        successors,
    })
}

pub fn step_to_pb(step: LookupStep) -> pb::NextHopReply {
    let step = match step {
        LookupStep::Done { owner, fallbacks } => pb::next_hop_reply::Step::Done(pb::Owner {
            owner: Some((&owner).into()),
            fallbacks: nodes(&fallbacks),
        }),
        LookupStep::Ask { candidates } => pb::next_hop_reply::Step::Ask(pb::Candidates {
            nodes: nodes(&candidates),
        }),
    };
    pb::NextHopReply { step: Some(step) }
}

pub fn step_from_pb(reply: pb::NextHopReply) -> Result<LookupStep, Malformed> {
    match reply.step.ok_or(Malformed)? {
        pb::next_hop_reply::Step::Done(done) => Ok(LookupStep::Done {
            owner: done.owner.ok_or(Malformed)?.into(),
            fallbacks: refs(done.fallbacks),
        }),
        pb::next_hop_reply::Step::Ask(ask) => Ok(LookupStep::Ask {
            candidates: refs(ask.nodes),
        }),
    }
}

pub fn leave_to_pb(notice: &LeaveNotice) -> pb::LeaveRequest {
    pb::LeaveRequest {
        leaving: Some((&notice.leaving).into()),
        predecessor: notice.predecessor.as_ref().map(Into::into),
        successors: nodes(&notice.successors),
    }
}

pub fn leave_from_pb(request: pb::LeaveRequest) -> Result<LeaveNotice, Malformed> {
    Ok(LeaveNotice {
        leaving: request.leaving.ok_or(Malformed)?.into(),
        predecessor: request.predecessor.map(Into::into),
        successors: refs(request.successors),
    })
}
