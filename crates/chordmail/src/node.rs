//! `chordmail node`: opens the store, binds every listener, serves until SIGINT or
//! SIGTERM, then shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use cm_admin::{NodeRef, RingStatus, RingView};
use cm_repl::{Mail, MailConfig};
use cm_store::{Store, Write};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;

const META_NODE_ID: &str = "node.id";
const META_NODE_BITS: &str = "node.bits";

pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(&config.data)?);
    let id = node_identity(&store, &config)?;
    tracing::info!(id, addr = %config.addr, bits = config.bits, data = %config.data.display(), "node starting");

    let http = bind("admin http", config.http).await?;

    let mail_config = MailConfig { node_id: id, bits: config.bits, domains: config.domains.clone() };
    let mail = Mail::new(mail_config, store.clone());
    let ring: Arc<dyn RingStatus> = Arc::new(SoloRing { id, addr: config.addr.to_string() });

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let admin = cm_admin::router(mail.clone(), ring);
    let admin_shutdown = shutdown.clone();
    tasks.spawn(async move {
        axum::serve(http, admin).with_graceful_shutdown(admin_shutdown.cancelled_owned()).await.context("admin http")
    });

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    while let Some(joined) = tasks.join_next().await {
        joined.context("a server task panicked")??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds a listener and logs its address, or fails naming the address and the role.
async fn bind(role: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({role})"))?;
    tracing::info!(listener = role, addr = %listener.local_addr()?, "listening");
    Ok(listener)
}

/// The node's ring id: kept in the store so that a restart on the same `--data`
/// keeps it, and checked against `--id`/`--bits` so that a data directory is never
/// silently taken over by a different node.
fn node_identity(store: &Store, config: &NodeConfig) -> anyhow::Result<u64> {
    let read_u64 = |name: &str| -> anyhow::Result<Option<u64>> {
        let Some(bytes) = store.meta(name)? else { return Ok(None) };
        let bytes: [u8; 8] = bytes.try_into().map_err(|_| anyhow::anyhow!("store meta {name} is not 8 bytes"))?;
        Ok(Some(u64::from_be_bytes(bytes)))
    };
    let stored_id = read_u64(META_NODE_ID)?;
    let stored_bits = read_u64(META_NODE_BITS)?;
    if let Some(bits) = stored_bits {
        if bits != u64::from(config.bits) {
            bail!(
                "{} was created with --bits {bits}, not {}: use the same --bits or another --data",
                config.data.display(),
                config.bits
            );
        }
    }
    let id = match (stored_id, config.id) {
        (Some(stored), Some(given)) if stored != given => bail!(
            "{} belongs to node id {stored}, not --id {given}: use --id {stored} or another --data",
            config.data.display()
        ),
        (Some(stored), _) => stored,
        (None, Some(given)) => given,
        (None, None) => cm_types::key_of_node_addr(&config.addr.to_string(), config.bits),
    };
    if stored_id.is_none() {
        store.apply(&[
            Write::Meta { name: META_NODE_ID.to_owned(), value: id.to_be_bytes().to_vec() },
            Write::Meta { name: META_NODE_BITS.to_owned(), value: u64::from(config.bits).to_be_bytes().to_vec() },
        ])?;
    }
    Ok(id)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// The ring of a node that is alone: it is its own successor and predecessor.
struct SoloRing {
    id: u64,
    addr: String,
}

impl RingStatus for SoloRing {
    fn view(&self) -> RingView {
        let me = NodeRef { id: self.id, addr: self.addr.clone() };
        RingView { id: self.id, addr: self.addr.clone(), predecessor: Some(me.clone()), successors: vec![me], fingers: vec![], keys: 0 }
    }

    fn cluster(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<NodeRef>> + Send + '_>> {
        Box::pin(async move { vec![NodeRef { id: self.id, addr: self.addr.clone() }] })
    }
}
