//! Runs a [`cm_ring::Node`] over the network: join, periodic maintenance, lookups,
//! graceful leave.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cm_ring::{
    JoinError, Lookup, LookupError, LookupResult, Node, NodeRef, RingConfig, choose_join_successor,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::pb::ring_server::RingServer;
use crate::peers::Peers;
use crate::server::RingService;
use crate::shared::Shared;

/// Periods of the maintenance tasks and the deadline of every ring call. The
/// defaults converge a LAN ring of a few dozen nodes within seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub stabilize: Duration,
    pub fix_fingers: Duration,
    pub fix_successors: Duration,
    pub check_predecessor: Duration,
    pub probe: Duration,
    pub rpc_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            stabilize: Duration::from_millis(250),
            fix_fingers: Duration::from_millis(250),
            fix_successors: Duration::from_millis(500),
            check_predecessor: Duration::from_millis(500),
            probe: Duration::from_secs(2),
            rpc_timeout: Duration::from_millis(1000),
        }
    }
}

/// Concurrent gRPC calls a peer may have open on one connection: every node keeps one
/// connection per peer and multiplexes all its calls on it, so this bounds what one
/// peer can make this node work on at once, far above what SMTP/POP3 sessions need.
const RING_STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// The server-side deadline of every call on the ring port: longer than any caller's
/// own deadline (a hand-off's is 60 s), so it only ends work nobody waits for.
const RING_CALL_SERVER_TIMEOUT: Duration = Duration::from_secs(180);
/// Nodes a cluster walk visits at most.
const CLUSTER_WALK_NODES_MAX: usize = 4096;

pub struct RingOptions {
    pub me: NodeRef,
    pub config: RingConfig,
    /// Ring address of a member to join through; `None` starts a new ring.
    pub entry: Option<String>,
    /// Peers remembered from an earlier life (kept in `--data`), probed for healing.
    pub remembered: Vec<NodeRef>,
    pub timing: Timing,
    /// Called (from a maintenance task) when the set of remembered peers changed.
    pub on_peers_changed: Box<dyn Fn(Vec<NodeRef>) + Send + Sync>,
    /// Mutual TLS on the ring port, both directions; `None` runs it in plaintext.
    pub tls: Option<crate::ClusterTls>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "entry node {addr} does not answer on its ring port, or refused this node's cluster certificate; check --entry-addr, that it runs, and that both nodes have certificates of the same cluster CA"
    )]
    EntryUnreachable { addr: String },
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("joining through {addr} failed: {reason}")]
    JoinFailed { addr: String, reason: String },
    #[error("the ring service failed: {0}")]
    Serve(String),
}

/// A handle on the running ring of this node; cheap to clone.
#[derive(Clone)]
pub struct RingHandle {
    shared: Arc<Shared>,
}

impl RingHandle {
    pub fn view(&self) -> cm_ring::RingView {
        self.shared.node().view()
    }

    pub fn me(&self) -> NodeRef {
        self.shared.me()
    }

    /// This node's successor list (`[me]` when alone).
    pub fn successors(&self) -> Vec<NodeRef> {
        self.shared.node().successors().to_vec()
    }

    pub fn predecessor(&self) -> Option<NodeRef> {
        self.shared.node().predecessor().cloned()
    }

    pub fn peers(&self) -> &Peers {
        &self.shared.peers
    }

    /// The successor of `key` (the node responsible for it), routing around dead nodes.
    pub async fn lookup(&self, key: u64) -> Result<LookupResult, LookupError> {
        let started = std::time::Instant::now();
        let lookup = self.shared.node().start_lookup(key);
        let outcome = self.shared.drive(lookup).await;
        cm_types::metrics::RING_LOOKUP_SECONDS.observe_duration(started.elapsed());
        if let Ok(found) = &outcome {
            cm_types::metrics::RING_LOOKUP_HOPS.observe(u64::from(found.hops));
        }
        outcome
    }

    /// The ring walked along successors from this node, each node once, in order.
    /// A node that does not answer is skipped using the previous node's list.
    pub async fn cluster(&self) -> Vec<NodeRef> {
        let me = self.me();
        let mut walked = vec![me.clone()];
        let mut pending: Vec<NodeRef> = self.successors();
        while walked.len() < CLUSTER_WALK_NODES_MAX {
            let Some(next) = pending.first().cloned() else {
                break;
            };
            if next.id == me.id || walked.iter().any(|node| node.id == next.id) {
                break;
            }
            match self.shared.peers.get_state(&next.addr).await {
                Ok(state) if state.node == next => {
                    walked.push(next);
                    pending = state.successors;
                }
                _ => {
                    pending.remove(0);
                }
            }
        }
        walked
    }

    /// Tells the predecessor and the successor that this node leaves, so they repair
    /// at once. Best effort: each notice has the ring call deadline.
    pub async fn leave(&self) {
        let notices = self.shared.node().leave_notices();
        for (recipient, notice) in notices {
            if self.shared.peers.leave(&recipient, &notice).await.is_err() {
                tracing::warn!(peer = %recipient.addr, "could not tell a neighbour that this node leaves");
            }
        }
    }
}

/// Starts the ring service (and `other_services`, such as replication, which share
/// its port) on `listener`, joins (or starts) the ring, and spawns the maintenance
/// tasks; they and the server stop when `shutdown` is cancelled.
pub struct RingDriver;

impl RingDriver {
    pub async fn start(
        options: RingOptions,
        listener: TcpListener,
        shutdown: CancellationToken,
        tasks: &mut JoinSet<Result<(), StartError>>,
        other_services: tonic::service::Routes,
    ) -> Result<RingHandle, StartError> {
        let RingOptions {
            me,
            config,
            entry,
            remembered,
            timing,
            on_peers_changed,
            tls,
        } = options;
        let node = Node::new_ring(config, me.clone(), remembered.clone()).map_err(|error| {
            StartError::JoinFailed {
                addr: me.addr.clone(),
                reason: error.to_string(),
            }
        })?;
        let shared = Arc::new(Shared {
            node: Mutex::new(node),
            peers: Peers::with_tls(timing.rpc_timeout, tls.as_ref()),
            predecessor_alive: AtomicBool::new(true),
            tls_on: tls.is_some(),
        });

        let service = RingServer::new(RingService {
            shared: shared.clone(),
        });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server_shutdown = shutdown.clone();
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(RING_STREAMS_PER_CONNECTION_MAX)
            .timeout(RING_CALL_SERVER_TIMEOUT);
        if let Some(tls) = &tls {
            builder = builder
                .tls_config(tls.server_config())
                .map_err(|error| StartError::Serve(error.to_string()))?;
        }
        tasks.spawn(async move {
            builder
                .add_routes(other_services)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, server_shutdown.cancelled_owned())
                .await
                .map_err(|error| StartError::Serve(error.to_string()))
        });

        if let Some(entry) = entry {
            match join(&shared, &me, config, &entry, remembered.clone()).await {
                Ok(joined) => {
                    *shared.node() = joined;
                    tracing::info!(
                        id = me.id,
                        successor = shared.node().successor().id,
                        "joined the ring"
                    );
                }
                // A restarted node that remembers peers need not wait for its entry
                // node: it starts alone and its probes merge it back into the ring.
                Err(StartError::EntryUnreachable { addr }) if !remembered.is_empty() => {
                    tracing::warn!(entry = %addr, n_remembered = remembered.len(), "entry node does not answer; rejoining through remembered peers");
                }
                // The same when the entry answers but the lookup through it meets
                // only dead nodes: its neighbours crashed with us and it has not
                // noticed yet (seen when 2 of 3 nodes restart at once).
                Err(StartError::JoinFailed { addr, reason }) if !remembered.is_empty() => {
                    tracing::warn!(entry = %addr, %reason, n_remembered = remembered.len(), "joining through the entry node failed; rejoining through remembered peers");
                }
                Err(error) => return Err(error),
            }
        } else {
            tracing::info!(id = me.id, "started a new ring");
        }

        spawn_periodic(
            tasks,
            &shutdown,
            timing.stabilize,
            shared.clone(),
            |shared| async move { shared.stabilize().await },
        );
        spawn_periodic(
            tasks,
            &shutdown,
            timing.check_predecessor,
            shared.clone(),
            |shared| async move { shared.check_predecessor().await },
        );
        spawn_periodic(
            tasks,
            &shutdown,
            timing.fix_successors,
            shared.clone(),
            |shared| async move { shared.fix_successors().await },
        );
        spawn_periodic(
            tasks,
            &shutdown,
            timing.fix_fingers,
            shared.clone(),
            |shared| async move { shared.fix_fingers().await },
        );
        let on_peers_changed = Arc::new(on_peers_changed);
        let last_saved = Arc::new(Mutex::new(remembered));
        spawn_periodic(
            tasks,
            &shutdown,
            timing.probe,
            shared.clone(),
            move |shared| {
                let (on_peers_changed, last_saved) = (on_peers_changed.clone(), last_saved.clone());
                async move {
                    shared.probe().await;
                    let current = shared.node().remembered_peers().to_vec();
                    let mut saved = last_saved.lock().expect("peer list mutex poisoned");
                    if *saved != current {
                        on_peers_changed(current.clone());
                        *saved = current;
                    }
                }
            },
        );
        Ok(RingHandle { shared })
    }
}

async fn join(
    shared: &Shared,
    me: &NodeRef,
    config: RingConfig,
    entry: &str,
    remembered: Vec<NodeRef>,
) -> Result<Node, StartError> {
    let entry_state = entry_state_with_retries(shared, entry).await?;
    let entry_ref = entry_state.node.clone();
    let failed = |reason: String| StartError::JoinFailed {
        addr: entry.to_owned(),
        reason,
    };
    let found = shared
        .drive(Lookup::via(me.id, entry_ref.clone()))
        .await
        .map_err(|error| failed(error.to_string()))?;
    let successor = match choose_join_successor(me, &found)? {
        Some(successor) => successor,
        None => {
            let next_key = me.id.wrapping_add(1) & shared.node().space().id_max();
            let found = shared
                .drive(Lookup::via(next_key, entry_ref))
                .await
                .map_err(|error| failed(error.to_string()))?;
            if found.owner.id == me.id {
                // Our previous incarnation is the only node the ring names: we are alone.
                return Node::new_ring(config, me.clone(), remembered)
                    .map_err(|error| failed(error.to_string()));
            }
            found.owner
        }
    };
    let state = shared
        .peers
        .get_state(&successor.addr)
        .await
        .map_err(|_| failed(format!("successor {} does not answer", successor.addr)))?;
    let node = Node::join(config, me.clone(), state, remembered)?;
    Ok(node)
}

/// Attempts to reach the entry node before giving up; a node that is starting or
/// briefly overloaded deserves more than one ring call deadline.
const ENTRY_ATTEMPTS_MAX: u32 = 5;

async fn entry_state_with_retries(
    shared: &Shared,
    entry: &str,
) -> Result<cm_ring::RemoteState, StartError> {
    for attempt in 1..=ENTRY_ATTEMPTS_MAX {
        match shared.peers.get_state(entry).await {
            Ok(state) => return Ok(state),
            Err(_) if attempt < ENTRY_ATTEMPTS_MAX => {
                tokio::time::sleep(shared.peers.rpc_timeout() / 2).await;
            }
            Err(_) => {}
        }
    }
    Err(StartError::EntryUnreachable {
        addr: entry.to_owned(),
    })
}

fn spawn_periodic<F, Fut>(
    tasks: &mut JoinSet<Result<(), StartError>>,
    shutdown: &CancellationToken,
    period: Duration,
    shared: Arc<Shared>,
    mut work: F,
) where
    F: FnMut(Arc<Shared>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = ticks.tick() => work(shared.clone()).await,
            }
        }
    });
}
