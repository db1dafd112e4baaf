//! `chordmail up`: a local ring of N node processes on 127.0.0.1, a demo account,
//! and directions for a mail client. Ctrl-C (or SIGTERM) stops every node cleanly.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cli::UpArgs;
use crate::config::{HTTP_PORT_OFFSET, IMAP_PORT_OFFSET, POP3_PORT_OFFSET, SMTP_PORT_OFFSET};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const DEMO_ADDRESS: &str = "demo@localhost";
const DEMO_PASSWORD: &str = "demo";

/// The node processes; dropping it kills whatever still runs, so that an error on
/// the way never leaves orphans behind.
struct Ring {
    children: Vec<(u16, Child)>,
}

impl Drop for Ring {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where `up` keeps its cluster CA, below its `--data`.
const CA_DIR: &str = "ca";
/// Where each node's cluster certificate goes, below the node's own data directory.
const NODE_CERT_DIR: &str = "cluster";

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let n_nodes = args.nodes;
    let replicas = n_nodes.min(3);
    let exe = std::env::current_exe().context("cannot find the chordmail executable")?;
    crate::trust::prepare_data_dir(&args.data)?;
    let token_path = args.data.join(crate::trust::ADMIN_TOKEN_FILE);
    if !token_path.exists() {
        let token = crate::trust::new_token_text();
        crate::trust::write_new_private(&token_path, format!("{token}\n").as_bytes())
            .with_context(|| format!("cannot create {}", token_path.display()))?;
    }
    let token = crate::trust::read_token_file(&token_path, "the admin token")
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let ca_dir = args.data.join(CA_DIR);
    if !ca_dir.join(cm_tls::cluster::CA_KEY_FILE).exists() {
        cm_tls::cluster::create_ca(&ca_dir)?;
    }
    let mut ring = Ring {
        children: Vec::new(),
    };
    let first_port = args.base_port;
    for node_idx in 0..n_nodes {
        let port = first_port + node_idx;
        let data = args.data.join(format!("node-{node_idx}"));
        let ring_addr = format!("127.0.0.1:{port}");
        let cert_dir = data.join(NODE_CERT_DIR);
        if !cert_dir.join(cm_tls::cluster::NODE_KEY_FILE).exists() {
            cm_tls::cluster::create_node_cert(&ca_dir, &ring_addr, &cert_dir)?;
        }
        let log_path = args.data.join(format!("node-{node_idx}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut command = Command::new(&exe);
        command
            .args([
                "node",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--replicas",
                &replicas.to_string(),
            ])
            .arg("--data")
            .arg(&data)
            .arg("--admin-token-file")
            .arg(&token_path)
            .arg("--cluster-ca")
            .arg(ca_dir.join(cm_tls::cluster::CA_CERT_FILE))
            .arg("--cluster-cert")
            .arg(cert_dir.join(cm_tls::cluster::NODE_CERT_FILE))
            .arg("--cluster-key")
            .arg(cert_dir.join(cm_tls::cluster::NODE_KEY_FILE))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl(2) is async-signal-safe; it asks the kernel to SIGTERM the node
        // when `up` dies, even by SIGKILL, so no node outlives it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        if node_idx > 0 {
            command.args(["--entry-addr", &format!("127.0.0.1:{first_port}")]);
        }
        let child = command.spawn().context("cannot start a node")?;
        ring.children.push((port, child));
        wait_ready(&mut ring, port, &log_path).await?;
        println!(
            "node {node_idx}: ring 127.0.0.1:{port}  log {}",
            log_path.display()
        );
    }
    create_demo_account(first_port + HTTP_PORT_OFFSET, token.secret()).await?;
    print_directions(n_nodes, first_port, replicas, &token_path);

    let outcome = supervise(&mut ring).await;
    stop(&mut ring).await;
    outcome
}

async fn wait_ready(ring: &mut Ring, port: u16, log_path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let url = format!("http://127.0.0.1:{}/healthz", port + HTTP_PORT_OFFSET);
    loop {
        let (_, child) = ring.children.last_mut().expect("a node was just started");
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            let last_lines: Vec<&str> = log
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "the node on port {port} exited ({status}):\n{}",
                last_lines.join("\n")
            );
        }
        let probe_url = url.clone();
        let healthy = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(1)))
                .build()
                .into();
            agent.get(&probe_url).call().is_ok()
        })
        .await?;
        if healthy {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the node on port {port} is not ready after {READY_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the demo account, retrying while the ring is still forming (a write needs a
/// majority of the replicas to be in the ring and known to the node).
async fn create_demo_account(http_port: u16, token: &str) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{http_port}/api/users");
    let bearer = format!("Bearer {token}");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let target = url.clone();
        let bearer = bearer.clone();
        let (status, reason) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<(u16, String)> {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                let body =
                    serde_json::json!({ "address": DEMO_ADDRESS, "password": DEMO_PASSWORD });
                let mut response = agent
                    .post(&target)
                    .header("Authorization", &bearer)
                    .send_json(body)?;
                let status = response.status().as_u16();
                Ok((
                    status,
                    response.body_mut().read_to_string().unwrap_or_default(),
                ))
            })
            .await??;
        match status {
            201 | 409 => return Ok(()),
            503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            other => bail!("creating the demo account failed with HTTP {other}: {reason}"),
        }
    }
}

fn print_directions(n_nodes: u16, first_port: u16, replicas: u16, token_path: &Path) {
    let smtp = first_port + SMTP_PORT_OFFSET;
    let pop3 = first_port + POP3_PORT_OFFSET;
    let http = first_port + HTTP_PORT_OFFSET;
    let imap = first_port + IMAP_PORT_OFFSET;
    println!();
    println!(
        "chordmail: a ring of {n_nodes} nodes on 127.0.0.1 is up ({replicas} copies of every key, mutual TLS between nodes)."
    );
    println!("  account   {DEMO_ADDRESS}, password \"{DEMO_PASSWORD}\"");
    println!(
        "  SMTP      127.0.0.1:{smtp}..{}   (STARTTLS, AUTH PLAIN/LOGIN)",
        smtp + n_nodes - 1
    );
    println!(
        "  POP3      127.0.0.1:{pop3}..{}   (STLS, USER/PASS, AUTH PLAIN)",
        pop3 + n_nodes - 1
    );
    println!(
        "  IMAP      127.0.0.1:{imap}..{}   (STARTTLS, LOGIN, AUTHENTICATE PLAIN, IDLE)",
        imap + n_nodes - 1
    );
    println!(
        "  admin     http://127.0.0.1:{http}/  (chordmail ring --node http://127.0.0.1:{http})"
    );
    println!(
        "  token     {}  (the admin API needs it: Authorization: Bearer TOKEN)",
        token_path.display()
    );
    println!(
        "  try       swaks --server 127.0.0.1:{smtp} --to {DEMO_ADDRESS} --from {DEMO_ADDRESS} --auth PLAIN --auth-user {DEMO_ADDRESS} --auth-password {DEMO_PASSWORD}"
    );
    println!(
        "            (a sender in a served domain must log in as itself; AUTH needs STARTTLS except on loopback)"
    );
    println!(
        "            python3 -c \"import poplib; p=poplib.POP3('127.0.0.1',{pop3}); p.user('{DEMO_ADDRESS}'); p.pass_('{DEMO_PASSWORD}'); print(p.stat())\""
    );
    println!("Press Ctrl-C to stop the ring.");
}

/// Waits for Ctrl-C or SIGTERM; fails if a node dies on its own meanwhile.
async fn supervise(ring: &mut Ring) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (port, child) in &mut ring.children {
                    if let Some(status) = child.try_wait()? {
                        bail!("the node on port {port} stopped on its own ({status}); stopping the ring");
                    }
                }
            }
        }
    }
}

/// SIGTERM to every node (each leaves the ring cleanly), then waits; a node that
/// does not stop in time is killed.
async fn stop(ring: &mut Ring) {
    println!("stopping {} nodes", ring.children.len());
    for (_, child) in ring.children.iter().rev() {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for (port, child) in &mut ring.children {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("node on port {port} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}
