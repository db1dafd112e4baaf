//! Incoming ring calls, answered from the shared [`cm_ring::Node`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::convert::{leave_from_pb, state_to_pb, step_to_pb};
use crate::pb;
use crate::shared::Shared;

pub struct RingService {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl pb::ring_server::Ring for RingService {
    async fn get_state(&self, _request: Request<pb::Empty>) -> Result<Response<pb::State>, Status> {
        let state = self.shared.node().remote_state();
        Ok(Response::new(state_to_pb(&state)))
    }

    async fn notify(
        &self,
        request: Request<pb::NotifyRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let tls_on = self.shared.tls_on;
        let claimed = request.get_ref().candidate.as_ref().map(|c| c.addr.clone());
        if let Some(addr) = &claimed
            && !crate::tls::peer_covers(&request, tls_on, addr)
        {
            return Err(refuse_claim("notify", addr));
        }
        let candidate = request
            .into_inner()
            .candidate
            .ok_or_else(|| Status::invalid_argument("notify without a candidate"))?;
        let candidate = cm_ring::NodeRef::from(candidate);
        if !self.shared.node().space().contains(candidate.id) {
            return Err(Status::invalid_argument(
                "candidate id outside this ring's identifier space",
            ));
        }
        let predecessor_alive = self.shared.predecessor_alive();
        self.shared.node().on_notify(candidate, predecessor_alive);
        Ok(Response::new(pb::Empty {}))
    }

    async fn next_hop(
        &self,
        request: Request<pb::NextHopRequest>,
    ) -> Result<Response<pb::NextHopReply>, Status> {
        let key = request.into_inner().key;
        let node = self.shared.node();
        if !node.space().contains(key) {
            return Err(Status::invalid_argument(
                "key outside this ring's identifier space",
            ));
        }
        Ok(Response::new(step_to_pb(node.next_hop(key))))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let claimed = request.get_ref().leaving.as_ref().map(|l| l.addr.clone());
        if let Some(addr) = &claimed
            && !crate::tls::peer_covers(&request, self.shared.tls_on, addr)
        {
            return Err(refuse_claim("leave", addr));
        }
        let notice = leave_from_pb(request.into_inner())
            .map_err(|_| Status::invalid_argument("leave without a node"))?;
        tracing::info!(leaving = notice.leaving.id, addr = %notice.leaving.addr, "neighbour leaves the ring");
        let effects = self.shared.node().on_leave_notice(notice);
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.run_effects(effects).await });
        Ok(Response::new(pb::Empty {}))
    }
}

/// A peer claimed a ring address its certificate does not cover: it is a member of
/// the cluster impersonating another node, or a misconfigured one.
fn refuse_claim(op: &str, addr: &str) -> Status {
    tracing::warn!(
        op,
        claimed = addr,
        "refused a ring address the peer's certificate does not cover"
    );
    Status::permission_denied(format!(
        "the peer's certificate does not cover the ring address {addr} it claims"
    ))
}
