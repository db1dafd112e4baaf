//! `chordmail node`: opens the store, binds every listener, serves until SIGINT or
//! SIGTERM, then shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use cm_admin::{NodeRef, RingStatus, RingView};
use cm_net::{RingDriver, RingHandle, RingOptions};
use cm_repl::{LocalReplica, Mail, MailConfig, ReplicaService};
use cm_store::{Store, Write};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;

const META_NODE_ID: &str = "node.id";
const META_NODE_BITS: &str = "node.bits";

/// What `prepare` checked and loaded before the runtime starts.
pub struct Prepared {
    /// `None` until the node makes `DATA/admin.token` on its first start.
    admin_token: Option<cm_admin::AdminToken>,
    admin_token_path: std::path::PathBuf,
    cluster_tls: Option<cm_net::ClusterTls>,
}

/// The checks of docs/DESIGN.md §10 that must pass before anything binds or is written:
/// secret files private, the admin token and the cluster files readable.
pub fn prepare(config: &NodeConfig) -> Result<Prepared, crate::config::UsageError> {
    crate::trust::check_tls_key(config)?;
    let cluster_tls = crate::trust::cluster_tls(config)?;
    let (admin_token, admin_token_path) = crate::trust::admin_token(config)?;
    Ok(Prepared {
        admin_token,
        admin_token_path,
        cluster_tls,
    })
}

pub async fn run(config: NodeConfig, prepared: Prepared) -> anyhow::Result<()> {
    crate::trust::prepare_data_dir(&config.data)?;
    let admin_token = match prepared.admin_token {
        Some(token) => token,
        None => crate::trust::make_admin_token(&prepared.admin_token_path)?,
    };
    tracing::info!(path = %prepared.admin_token_path.display(), "the admin API (/api/*) needs the token in this file");
    let store = Arc::new(Store::open(&config.data)?);
    let (id, identity_is_new) = node_identity(&store, &config)?;
    tracing::info!(id, addr = %config.addr, bits = config.bits, data = %config.data.display(), "node starting");

    let ring_listener = bind("ring", config.addr).await?;
    let smtp_listener = bind("smtp", config.smtp).await?;
    let pop3_listener = bind("pop3", config.pop3).await?;
    let imap_listener = bind("imap", config.imap).await?;
    let http = bind("admin http", config.http).await?;
    let tls = cm_tls::server_config(
        &config.data,
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        &config.hostname,
    )?;

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut ring_tasks = tokio::task::JoinSet::new();
    let me = cm_ring::NodeRef {
        id,
        addr: config.addr.to_string(),
    };
    let ring_config = cm_ring::RingConfig::new(config.bits, config.replicas as usize);
    let peers_store = store.clone();
    let options = RingOptions {
        me,
        config: ring_config,
        entry: config.entry_addr.map(|addr| addr.to_string()),
        remembered: remembered_peers(&store),
        timing: config.ring_timing,
        on_peers_changed: Box::new(move |peers| save_remembered_peers(&peers_store, &peers)),
        tls: prepared.cluster_tls,
    };
    let local = Arc::new(LocalReplica::new(store.clone(), config.bits));
    let mail_cell = Arc::new(std::sync::OnceLock::new());
    let replica_routes =
        tonic::service::Routes::new(ReplicaService::server(local.clone(), mail_cell.clone()));
    let ring = RingDriver::start(
        options,
        ring_listener,
        shutdown.clone(),
        &mut ring_tasks,
        replica_routes,
    )
    .await?;
    if identity_is_new {
        // Only now: a join refused (say, for a taken id) must leave --data unclaimed.
        save_identity(&store, id, config.bits)?;
    }

    let mail_config = MailConfig {
        node_id: id,
        bits: config.bits,
        domains: config.domains.clone(),
        replicas: config.replicas as usize,
        successor_list_len: ring_config.successor_list_len,
    };
    let mail = Mail::new(mail_config, local, Some(ring.clone()));
    assert!(
        mail_cell.set(mail.clone()).is_ok(),
        "the mail service is created once"
    );
    let joined_with_empty_store = identity_is_new && config.entry_addr.is_some();
    if joined_with_empty_store {
        // Before any listener serves: no client read may reach this replica until
        // its neighbours handed it its data (see `antientropy::catch_up`).
        mail.local().set_syncing(true);
        tasks.spawn(catch_up_task(mail.clone(), shutdown.clone()));
    }
    tasks.spawn(anti_entropy_task(
        mail.clone(),
        config.anti_entropy_period,
        config.tombstone_grace,
        shutdown.clone(),
    ));

    tasks.spawn(outbound_task(
        mail.clone(),
        Arc::new(config.relay.clone()),
        shutdown.clone(),
    ));

    let smtp_config = cm_smtp::SmtpConfig {
        hostname: config.hostname.clone(),
        tls: Some(tls.clone()),
        sender_login_match: config.smtp_sender_login_match,
        ..Default::default()
    };
    tasks.spawn(cm_smtp_task(
        smtp_listener,
        smtp_config,
        mail.clone(),
        shutdown.clone(),
    ));
    let imap_config = cm_imap::ImapConfig {
        tls: Some(tls.clone()),
        ..Default::default()
    };
    let (imap_mail, imap_shutdown) = (mail.clone(), shutdown.clone());
    tasks.spawn(async move {
        cm_imap::serve(imap_listener, imap_config, imap_mail, imap_shutdown).await;
        anyhow::Ok(())
    });
    let pop3_config = cm_pop3::Pop3Config {
        hostname: config.hostname.clone(),
        tls: Some(tls),
        ..Default::default()
    };
    tasks.spawn(cm_pop3_task(
        pop3_listener,
        pop3_config,
        mail.clone(),
        shutdown.clone(),
    ));
    let admin = cm_admin::router(
        mail.clone(),
        Arc::new(RingAdmin(ring.clone())),
        admin_token,
        vec![config.hostname.to_lowercase()],
    );
    let admin_shutdown = shutdown.clone();
    tasks.spawn(async move {
        axum::serve(http, admin)
            .with_graceful_shutdown(admin_shutdown.cancelled_owned())
            .await
            .context("admin http")
    });

    tokio::select! {
        _ = wait_for_signal() => {}
        Some(failed) = ring_tasks.join_next() => {
            shutdown.cancel();
            failed.context("a ring task panicked")??;
            bail!("the ring service stopped unexpectedly");
        }
    }
    tracing::info!("shutting down");
    ring.leave().await;
    shutdown.cancel();
    while let Some(joined) = tasks.join_next().await {
        joined.context("a server task panicked")??;
    }
    while let Some(joined) = ring_tasks.join_next().await {
        joined.context("a ring task panicked")??;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn anti_entropy_task(
    mail: Mail,
    period: std::time::Duration,
    tombstone_grace: std::time::Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    cm_repl::antientropy::run(mail, period, tombstone_grace, shutdown).await;
    Ok(())
}

/// The outbound queue's worker (docs/DESIGN.md §12), with the system's DNS when its
/// configuration can be read.
async fn outbound_task(
    mail: Mail,
    relay: Arc<cm_relay::RelayConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match cm_relay::DnsResolver::from_system_conf() {
        Ok(resolver) => cm_relay::queue::run(mail, relay, Arc::new(resolver), shutdown).await,
        Err(error) => {
            tracing::warn!(%error, "no DNS for outbound mail: only [relay] routes and the smarthost are used");
            let resolver = cm_relay::NoResolver {
                reason: format!("no DNS resolver: {error}"),
            };
            cm_relay::queue::run(mail, relay, Arc::new(resolver), shutdown).await
        }
    }
    Ok(())
}

async fn catch_up_task(mail: Mail, shutdown: CancellationToken) -> anyhow::Result<()> {
    cm_repl::antientropy::catch_up(mail, shutdown).await;
    Ok(())
}

async fn cm_smtp_task(
    listener: TcpListener,
    config: cm_smtp::SmtpConfig,
    mail: Mail,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    cm_smtp::serve(listener, config, mail, shutdown).await;
    Ok(())
}

async fn cm_pop3_task(
    listener: TcpListener,
    config: cm_pop3::Pop3Config,
    mail: Mail,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    cm_pop3::serve(listener, config, mail, shutdown).await;
    Ok(())
}

/// Binds a listener and logs its address, or fails naming the address and the role.
async fn bind(role: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({role})"))?;
    tracing::info!(listener = role, addr = %listener.local_addr()?, "listening");
    Ok(listener)
}

/// The node's ring id, and whether it is new to this `--data`. The id is kept in the
/// store so that a restart on the same `--data` keeps it, and checked against
/// `--id`/`--bits` so that a data directory is never silently taken over by another node.
fn node_identity(store: &Store, config: &NodeConfig) -> anyhow::Result<(u64, bool)> {
    let read_u64 = |name: &str| -> anyhow::Result<Option<u64>> {
        let Some(bytes) = store.meta(name)? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("store meta {name} is not 8 bytes"))?;
        Ok(Some(u64::from_be_bytes(bytes)))
    };
    let stored_id = read_u64(META_NODE_ID)?;
    let stored_bits = read_u64(META_NODE_BITS)?;
    if let Some(bits) = stored_bits
        && bits != u64::from(config.bits)
    {
        bail!(
            "{} was created with --bits {bits}, not {}: use the same --bits or another --data",
            config.data.display(),
            config.bits
        );
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
    Ok((id, stored_id.is_none()))
}

fn save_identity(store: &Store, id: u64, bits: u32) -> anyhow::Result<()> {
    store.apply(&[
        Write::Meta {
            name: META_NODE_ID.to_owned(),
            value: id.to_be_bytes().to_vec(),
        },
        Write::Meta {
            name: META_NODE_BITS.to_owned(),
            value: u64::from(bits).to_be_bytes().to_vec(),
        },
    ])?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

const META_RING_PEERS: &str = "ring.peers";

/// Peers remembered from an earlier life of this node, for partition healing.
fn remembered_peers(store: &Store) -> Vec<cm_ring::NodeRef> {
    match store.meta(META_RING_PEERS) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::warn!(%error, "ignoring unreadable remembered peers");
            Vec::new()
        }),
        Ok(None) => Vec::new(),
        Err(error) => {
            tracing::warn!(%error, "cannot read remembered peers");
            Vec::new()
        }
    }
}

fn save_remembered_peers(store: &Store, peers: &[cm_ring::NodeRef]) {
    let value = serde_json::to_vec(peers).expect("node refs serialise");
    if let Err(error) = store.apply(&[Write::Meta {
        name: META_RING_PEERS.to_owned(),
        value,
    }]) {
        tracing::warn!(%error, "cannot save remembered peers");
    }
}

/// The admin API's view of the ring driver.
struct RingAdmin(RingHandle);

impl RingStatus for RingAdmin {
    fn view(&self) -> RingView {
        self.0.view()
    }

    fn cluster(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<NodeRef>> + Send + '_>> {
        Box::pin(self.0.cluster())
    }
}
