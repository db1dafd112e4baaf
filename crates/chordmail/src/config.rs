//! Resolving `chordmail node`'s flags and `--config` file into one [`NodeConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{LogFormat, NodeArgs};

/// Service ports default to the ring port plus these offsets (docs/DESIGN.md §2), so that
/// the seed's two commands (ring ports 5000 and 5002) run side by side on one host.
/// No default lands in Linux's ephemeral range (32768-60999) for ring ports up to
/// 5000: a port there can be held in TIME_WAIT by any outgoing connection and then
/// refuses a restarted listener.
pub const SMTP_PORT_OFFSET: u16 = 10_000;
pub const POP3_PORT_OFFSET: u16 = 20_000;
pub const HTTP_PORT_OFFSET: u16 = 3_000;
pub const IMAP_PORT_OFFSET: u16 = 9_000;

/// The three files of the ring port's mutual TLS (docs/DESIGN.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A node's configuration once flags, file and defaults are merged and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: Option<u64>,
    pub addr: SocketAddr,
    pub bits: u32,
    pub entry_addr: Option<SocketAddr>,
    pub smtp: SocketAddr,
    pub pop3: SocketAddr,
    pub imap: SocketAddr,
    pub http: SocketAddr,
    pub data: PathBuf,
    pub replicas: u64,
    pub domains: Vec<String>,
    pub hostname: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `None`: the ring port runs in plaintext (loopback, or `--insecure-ring`).
    pub cluster: Option<ClusterFiles>,
    pub admin_token_file: Option<PathBuf>,
    pub ring_timing: cm_net::Timing,
    pub anti_entropy_period: std::time::Duration,
    pub tombstone_grace: std::time::Duration,
    /// `smtp_sender_login_match` (docs/DESIGN.md §10): a MAIL FROM in a served
    /// domain needs a session logged in as that address.
    pub smtp_sender_login_match: bool,
    /// The outbound queue's `[relay]` table (docs/DESIGN.md §12), validated.
    pub relay: cm_relay::RelayConfig,
    pub log_format: LogFormat,
}

/// The `--config` file: the same options as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    id: Option<u64>,
    addr: Option<String>,
    bits: Option<u32>,
    entry_addr: Option<String>,
    smtp: Option<String>,
    pop3: Option<String>,
    imap: Option<String>,
    http: Option<String>,
    data: Option<PathBuf>,
    replicas: Option<u64>,
    #[serde(alias = "domains")]
    domain: Option<Vec<String>>,
    hostname: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    cluster_ca: Option<PathBuf>,
    cluster_cert: Option<PathBuf>,
    cluster_key: Option<PathBuf>,
    insecure_ring: Option<bool>,
    admin_token_file: Option<PathBuf>,
    /// Ring maintenance periods and the ring call deadline, in milliseconds
    /// (file only: operators rarely need them, tests and benchmarks do).
    stabilize_ms: Option<u64>,
    fix_fingers_ms: Option<u64>,
    fix_successors_ms: Option<u64>,
    check_predecessor_ms: Option<u64>,
    probe_ms: Option<u64>,
    rpc_timeout_ms: Option<u64>,
    /// Pause between anti-entropy rounds, in milliseconds.
    anti_entropy_ms: Option<u64>,
    /// Age in seconds after which tombstones of deleted mail are collected.
    tombstone_grace_s: Option<u64>,
    /// `false` lets SMTP sessions use a sender in a served domain without logging
    /// in as it (file only: relaxing a security rule takes a written decision).
    smtp_sender_login_match: Option<bool>,
    /// Mail to other domains: routes, smarthost, retries (file only).
    relay: Option<cm_relay::RelayConfig>,
    /// `"text"` or `"json"`, as `--log-format`.
    log_format: Option<LogFormat>,
}

/// A configuration mistake: reported with exit status 2 (bad usage).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

impl NodeConfig {
    pub fn resolve(args: &NodeArgs) -> Result<NodeConfig, UsageError> {
        let file = match &args.config {
            Some(path) => read_config_file(path)?,
            None => ConfigFile::default(),
        };
        let addr_text = args
            .addr
            .clone()
            .or(file.addr)
            .ok_or_else(|| usage("--addr HOST:PORT is required (the node's ring address)"))?;
        let addr = parse_socket_addr("--addr", &addr_text)?;
        let bits = args.bits.or(file.bits).unwrap_or(64);
        if !(1..=cm_types::RING_BITS_MAX).contains(&bits) {
            return Err(usage(format!("--bits must be in 1..=64, got {bits}")));
        }
        let id = args.id.or(file.id);
        if let Some(id) = id
            && bits < 64
            && id >= 1u64 << bits
        {
            return Err(usage(format!(
                "--id {id} is outside [0, 2^{bits}) = [0, {})",
                1u64 << bits
            )));
        }
        let entry_addr = match args.entry_addr.clone().or(file.entry_addr) {
            Some(text) => Some(parse_socket_addr("--entry-addr", &text)?),
            None => None,
        };
        let service = |flag: &str,
                       given: Option<String>,
                       offset: u16|
         -> Result<SocketAddr, UsageError> {
            match given {
                Some(text) => parse_socket_addr(flag, &text),
                None => {
                    let port = addr.port().checked_add(offset).ok_or_else(|| {
                        usage(format!(
                            "ring port {} + {offset} is past 65535: set {flag} HOST:PORT explicitly",
                            addr.port()
                        ))
                    })?;
                    Ok(SocketAddr::new(addr.ip(), port))
                }
            }
        };
        let smtp = service("--smtp", args.smtp.clone().or(file.smtp), SMTP_PORT_OFFSET)?;
        let pop3 = service("--pop3", args.pop3.clone().or(file.pop3), POP3_PORT_OFFSET)?;
        let imap = service("--imap", args.imap.clone().or(file.imap), IMAP_PORT_OFFSET)?;
        let mut http = service(
            "--http",
            args.http.clone().or(file.http.clone()),
            HTTP_PORT_OFFSET,
        )?;
        if args.http.is_none() && file.http.is_none() {
            // The admin API stays on the host unless asked otherwise (docs/DESIGN.md §2).
            http.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let cluster = resolve_cluster_files(
            addr,
            [
                ("--cluster-ca", args.cluster_ca.clone().or(file.cluster_ca)),
                (
                    "--cluster-cert",
                    args.cluster_cert.clone().or(file.cluster_cert),
                ),
                (
                    "--cluster-key",
                    args.cluster_key.clone().or(file.cluster_key),
                ),
            ],
            args.insecure_ring || file.insecure_ring.unwrap_or(false),
        )?;
        let admin_token_file = args.admin_token_file.clone().or(file.admin_token_file);
        let data = args.data.clone().or(file.data).unwrap_or_else(|| {
            PathBuf::from("chordmail-data").join(format!("{}_{}", addr.ip(), addr.port()))
        });
        let replicas = args.replicas.or(file.replicas).unwrap_or(3);
        if !(1..=16).contains(&replicas) {
            return Err(usage(format!(
                "--replicas must be in 1..=16, got {replicas}"
            )));
        }
        let domains = if !args.domains.is_empty() {
            args.domains.clone()
        } else {
            file.domain.unwrap_or_else(|| vec!["localhost".to_owned()])
        };
        let mut domains: Vec<String> = domains
            .iter()
            .map(|domain| domain.trim().to_lowercase())
            .collect();
        for domain in &domains {
            let probe = format!("postmaster@{domain}");
            cm_types::Address::parse(&probe)
                .map_err(|error| usage(format!("--domain {domain:?}: {error}")))?;
        }
        domains.sort();
        domains.dedup();
        let hostname = args
            .hostname
            .clone()
            .or(file.hostname)
            .unwrap_or_else(|| "localhost".to_owned());
        let tls_cert = args.tls_cert.clone().or(file.tls_cert);
        let tls_key = args.tls_key.clone().or(file.tls_key);
        if tls_cert.is_some() != tls_key.is_some() {
            return Err(usage("set both --tls-cert and --tls-key, or neither"));
        }
        let mut ring_timing = cm_net::Timing::default();
        let mut anti_entropy_period = cm_repl::antientropy::ROUND_PERIOD_DEFAULT;
        for (name, given, target) in [
            (
                "stabilize_ms",
                file.stabilize_ms,
                &mut ring_timing.stabilize,
            ),
            (
                "fix_fingers_ms",
                file.fix_fingers_ms,
                &mut ring_timing.fix_fingers,
            ),
            (
                "fix_successors_ms",
                file.fix_successors_ms,
                &mut ring_timing.fix_successors,
            ),
            (
                "check_predecessor_ms",
                file.check_predecessor_ms,
                &mut ring_timing.check_predecessor,
            ),
            ("probe_ms", file.probe_ms, &mut ring_timing.probe),
            (
                "rpc_timeout_ms",
                file.rpc_timeout_ms,
                &mut ring_timing.rpc_timeout,
            ),
            (
                "anti_entropy_ms",
                file.anti_entropy_ms,
                &mut anti_entropy_period,
            ),
        ] {
            if let Some(ms) = given {
                if !(10..=60_000).contains(&ms) {
                    return Err(usage(format!(
                        "{name} must be in 10..=60000 milliseconds, got {ms}"
                    )));
                }
                *target = std::time::Duration::from_millis(ms);
            }
        }
        let tombstone_grace = match file.tombstone_grace_s {
            Some(seconds) if seconds < 3600 => {
                return Err(usage(format!(
                    "tombstone_grace_s must be at least 3600 seconds, got {seconds}"
                )));
            }
            Some(seconds) => std::time::Duration::from_secs(seconds),
            None => cm_repl::antientropy::TOMBSTONE_GRACE_DEFAULT,
        };
        let mut relay = file.relay.unwrap_or_default();
        if relay.hostname == cm_relay::RelayConfig::default().hostname {
            // The EHLO name of outbound mail is the node's, unless [relay] names one.
            relay.hostname = hostname.clone();
        }
        relay
            .validate()
            .map_err(|error| usage(format!("[relay] in --config: {error}")))?;
        Ok(NodeConfig {
            id,
            addr,
            bits,
            entry_addr,
            smtp,
            pop3,
            imap,
            http,
            data,
            replicas,
            domains,
            hostname,
            tls_cert,
            tls_key,
            cluster,
            admin_token_file,
            ring_timing,
            anti_entropy_period,
            tombstone_grace,
            smtp_sender_login_match: file.smtp_sender_login_match.unwrap_or(true),
            relay,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

/// The cluster files, all three or none. Without them the ring port would be open to
/// anyone who reaches it, so that is allowed only on a loopback address (the seed's
/// commands, which must work verbatim) or with the explicit `--insecure-ring`; the
/// check runs before anything binds or touches `--data`.
fn resolve_cluster_files(
    addr: SocketAddr,
    files: [(&str, Option<PathBuf>); 3],
    insecure_ring: bool,
) -> Result<Option<ClusterFiles>, UsageError> {
    let given: Vec<&str> = files
        .iter()
        .filter(|(_, path)| path.is_some())
        .map(|(flag, _)| *flag)
        .collect();
    let [(_, ca), (_, cert), (_, key)] = files;
    match (ca, cert, key) {
        (Some(_), Some(_), Some(_)) if insecure_ring => Err(usage(
            "--insecure-ring and the cluster files (--cluster-ca/--cluster-cert/--cluster-key) exclude each other: drop one",
        )),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(ClusterFiles { ca, cert, key })),
        (None, None, None) if insecure_ring || addr.ip().is_loopback() => Ok(None),
        (None, None, None) => Err(usage(format!(
            "the ring address {addr} is not a loopback address, and the ring port would accept anyone without certificates: \
             make them with `chordmail cert ca --dir CA` and `chordmail cert node --ca-dir CA --addr {addr} --out DIR`, \
             then pass --cluster-ca CA/ca.crt --cluster-cert DIR/node.crt --cluster-key DIR/node.key \
             (or pass --insecure-ring to run the ring port in plaintext on a network you trust)"
        ))),
        _ => Err(usage(format!(
            "set all three of --cluster-ca, --cluster-cert and --cluster-key, or none (given: {})",
            given.join(", ")
        ))),
    }
}

fn read_config_file(path: &Path) -> Result<ConfigFile, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| usage(format!("cannot read --config {}: {error}", path.display())))?;
    toml::from_str(&text).map_err(|error| usage(format!("--config {}: {error}", path.display())))
}

fn parse_socket_addr(flag: &str, text: &str) -> Result<SocketAddr, UsageError> {
    text.parse().map_err(|_| {
        usage(format!(
            "{flag} {text:?} is not HOST:PORT with a numeric IP address"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(addr: &str) -> NodeArgs {
        NodeArgs {
            addr: Some(addr.to_owned()),
            ..NodeArgs::default()
        }
    }

    #[test]
    fn service_ports_follow_the_ring_port() {
        let config = NodeConfig::resolve(&args("127.0.0.1:5000")).unwrap();
        assert_eq!(config.smtp.to_string(), "127.0.0.1:15000");
        assert_eq!(config.pop3.to_string(), "127.0.0.1:25000");
        assert_eq!(config.imap.to_string(), "127.0.0.1:14000");
        assert_eq!(config.http.to_string(), "127.0.0.1:8000");
        assert_eq!(config.cluster, None);
        assert_eq!((config.bits, config.replicas), (64, 3));
        assert_eq!(config.domains, ["localhost"]);
        assert_eq!(config.data, PathBuf::from("chordmail-data/127.0.0.1_5000"));
    }

    #[test]
    fn ids_outside_the_space_and_high_ports_are_usage_errors() {
        let outside = NodeArgs {
            id: Some(8),
            bits: Some(3),
            ..args("127.0.0.1:5000")
        };
        assert!(
            NodeConfig::resolve(&outside)
                .unwrap_err()
                .0
                .contains("--id 8")
        );
        let inside = NodeArgs {
            id: Some(7),
            bits: Some(3),
            ..args("127.0.0.1:5000")
        };
        assert_eq!(NodeConfig::resolve(&inside).unwrap().id, Some(7));
        assert!(
            NodeConfig::resolve(&args("127.0.0.1:60000"))
                .unwrap_err()
                .0
                .contains("--smtp")
        );
        assert!(
            NodeConfig::resolve(&args("localhost:5000"))
                .unwrap_err()
                .0
                .contains("--addr")
        );
        assert!(
            NodeConfig::resolve(&NodeArgs::default())
                .unwrap_err()
                .0
                .contains("--addr")
        );
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:6000\"\nbits = 8\nreplicas = 2\ndomain = [\"Example.org\"]\nhttp = \"127.0.0.1:9999\"\n",
        )
        .unwrap();
        let from_file = NodeConfig::resolve(&NodeArgs {
            config: Some(path.clone()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(from_file.addr.to_string(), "127.0.0.1:6000");
        assert_eq!((from_file.bits, from_file.replicas), (8, 2));
        assert_eq!(from_file.domains, ["example.org"]);
        assert_eq!(from_file.http.to_string(), "127.0.0.1:9999");
        assert!(from_file.smtp_sender_login_match, "on by default");
        let overridden = NodeArgs {
            config: Some(path),
            bits: Some(16),
            ..args("127.0.0.1:7000")
        };
        let merged = NodeConfig::resolve(&overridden).unwrap();
        assert_eq!(
            (merged.addr.port(), merged.bits, merged.replicas),
            (7000, 16, 2)
        );
        assert_eq!(merged.smtp.to_string(), "127.0.0.1:17000");
    }

    #[test]
    fn log_format_comes_from_the_flag_then_the_file_then_text() {
        assert_eq!(
            NodeConfig::resolve(&args("127.0.0.1:5000"))
                .unwrap()
                .log_format,
            LogFormat::Text
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "addr = \"127.0.0.1:6000\"\nlog_format = \"json\"\n").unwrap();
        let from_file = NodeArgs {
            config: Some(path.clone()),
            ..NodeArgs::default()
        };
        assert_eq!(
            NodeConfig::resolve(&from_file).unwrap().log_format,
            LogFormat::Json
        );
        let flag_wins = NodeArgs {
            log_format: Some(LogFormat::Text),
            ..from_file
        };
        assert_eq!(
            NodeConfig::resolve(&flag_wins).unwrap().log_format,
            LogFormat::Text
        );
        std::fs::write(&path, "addr = \"127.0.0.1:6000\"\nlog_format = \"xml\"\n").unwrap();
        let refused = NodeConfig::resolve(&NodeArgs {
            config: Some(path),
            ..NodeArgs::default()
        });
        assert!(refused.unwrap_err().0.contains("log_format"));
    }

    #[test]
    fn the_admin_api_binds_loopback_unless_told_otherwise() {
        let insecure = NodeArgs {
            insecure_ring: true,
            ..args("10.1.2.3:5000")
        };
        let config = NodeConfig::resolve(&insecure).unwrap();
        assert_eq!(config.http.to_string(), "127.0.0.1:8000");
        assert_eq!(config.smtp.to_string(), "10.1.2.3:15000");
        let explicit = NodeArgs {
            http: Some("10.1.2.3:9000".to_owned()),
            ..insecure
        };
        assert_eq!(
            NodeConfig::resolve(&explicit).unwrap().http.to_string(),
            "10.1.2.3:9000"
        );
    }

    #[test]
    fn a_ring_port_off_loopback_needs_certificates_or_the_opt_out() {
        let error = NodeConfig::resolve(&args("10.0.0.1:5000")).unwrap_err().0;
        assert!(error.contains("chordmail cert"), "{error}");
        assert!(error.contains("--insecure-ring"), "{error}");
        let with_files = NodeArgs {
            cluster_ca: Some("ca.crt".into()),
            cluster_cert: Some("node.crt".into()),
            cluster_key: Some("node.key".into()),
            ..args("10.0.0.1:5000")
        };
        let cluster = NodeConfig::resolve(&with_files).unwrap().cluster.unwrap();
        assert_eq!(cluster.key, PathBuf::from("node.key"));
        let partial = NodeArgs {
            cluster_key: None,
            ..with_files.clone()
        };
        let error = NodeConfig::resolve(&partial).unwrap_err().0;
        assert!(error.contains("--cluster-ca, --cluster-cert"), "{error}");
        let both = NodeArgs {
            insecure_ring: true,
            ..with_files
        };
        assert!(
            NodeConfig::resolve(&both)
                .unwrap_err()
                .0
                .contains("exclude")
        );
        let loopback = NodeConfig::resolve(&args("127.0.0.2:5000")).unwrap();
        assert_eq!(loopback.cluster, None);
    }

    #[test]
    fn the_sender_login_match_is_relaxed_only_by_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "smtp_sender_login_match = false\n").unwrap();
        let relaxed = NodeConfig::resolve(&NodeArgs {
            config: Some(path),
            ..args("127.0.0.1:6000")
        })
        .unwrap();
        assert!(!relaxed.smtp_sender_login_match);
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "adr = \"127.0.0.1:6000\"\n").unwrap();
        let error = NodeConfig::resolve(&NodeArgs {
            config: Some(path),
            ..NodeArgs::default()
        })
        .unwrap_err();
        assert!(error.0.contains("adr"), "{error}");
    }
}
