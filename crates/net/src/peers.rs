//! Outgoing calls: one reused channel per peer, a deadline on every call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cm_ring::{LeaveNotice, LookupStep, NodeRef, RemoteState, Unreachable};
use tonic::transport::{Channel, Endpoint};

use crate::convert::{leave_to_pb, state_from_pb, step_from_pb};
use crate::pb;
use crate::pb::ring_client::RingClient;
use crate::tls::ClusterTls;

/// Channels kept at most; past it the cache starts over (peers that left the ring
/// would otherwise accumulate for ever).
const CHANNELS_MAX: usize = 1024;

/// The client side of the ring protocol.
pub struct Peers {
    rpc_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    /// Cluster TLS for every channel; `None` dials in plaintext (loopback or
    /// `--insecure-ring` nodes).
    tls: Option<ClusterTls>,
}

impl Peers {
    pub fn new(rpc_timeout: Duration) -> Peers {
        Peers::with_tls(rpc_timeout, None)
    }

    pub fn with_tls(rpc_timeout: Duration, tls: Option<&ClusterTls>) -> Peers {
        Peers {
            rpc_timeout,
            channels: Mutex::new(HashMap::new()),
            tls: tls.cloned(),
        }
    }

    pub fn rpc_timeout(&self) -> Duration {
        self.rpc_timeout
    }

    fn client(&self, addr: &str) -> Result<RingClient<Channel>, Unreachable> {
        self.channel(addr).map(RingClient::new)
    }

    /// The channel to `addr`, connected on first use and then reused by every call,
    /// whichever service it is for.
    pub fn channel(&self, addr: &str) -> Result<Channel, Unreachable> {
        let mut channels = self.channels.lock().expect("channel cache poisoned");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        if channels.len() >= CHANNELS_MAX {
            channels.clear();
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|_| Unreachable)?
            .connect_timeout(self.rpc_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config_with_verifier(tls.client_config(), tls.verifier_for(addr))
                .map_err(|_| Unreachable)?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Runs one call with the deadline; errors and timeouts are both `Unreachable`.
    async fn call<T, F>(
        &self,
        addr: &str,
        op: &'static str,
        call: impl FnOnce(RingClient<Channel>) -> F,
    ) -> Result<T, Unreachable>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client(addr)?;
        match tokio::time::timeout(self.rpc_timeout, call(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                tracing::debug!(peer = addr, op, code = ?status.code(), "ring call failed");
                Err(Unreachable)
            }
            Err(_) => {
                tracing::debug!(peer = addr, op, "ring call missed its deadline");
                Err(Unreachable)
            }
        }
    }

    pub async fn get_state(&self, addr: &str) -> Result<RemoteState, Unreachable> {
        let state = self
            .call(addr, "get_state", |mut client| async move {
                client.get_state(pb::Empty {}).await
            })
            .await?;
        state_from_pb(state).map_err(|_| Unreachable)
    }

    pub async fn notify(&self, to: &NodeRef, candidate: &NodeRef) -> Result<(), Unreachable> {
        let request = pb::NotifyRequest {
            candidate: Some(candidate.into()),
        };
        self.call(&to.addr, "notify", |mut client| async move {
            client.notify(request).await
        })
        .await
        .map(|_| ())
    }

    pub async fn next_hop(&self, to: &NodeRef, key: u64) -> Result<LookupStep, Unreachable> {
        let request = pb::NextHopRequest { key };
        let reply = self
            .call(&to.addr, "next_hop", |mut client| async move {
                client.next_hop(request).await
            })
            .await?;
        step_from_pb(reply).map_err(|_| Unreachable)
    }

    pub async fn leave(&self, to: &NodeRef, notice: &LeaveNotice) -> Result<(), Unreachable> {
        let request = leave_to_pb(notice);
        self.call(&to.addr, "leave", |mut client| async move {
            client.leave(request).await
        })
        .await
        .map(|_| ())
    }
}
