//! The command line (docs/DESIGN.md §2) and its mapping onto a resolved configuration.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chordmail",
    version,
    about = "A distributed mail system on a Chord ring"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one ring node with its SMTP, POP3 and admin HTTP servers.
    Node(Box<NodeArgs>),
    /// Run a local ring of N nodes on 127.0.0.1 to try chordmail out.
    Up(UpArgs),
    /// Manage accounts through a node's admin API.
    User(UserArgs),
    /// Show the ring as a node sees it.
    Ring(RingArgs),
    /// Show, retry and delete outbound mail a node holds (docs/DESIGN.md §12).
    Queue(QueueArgs),
    /// Make the certificates of a cluster's mutual TLS (docs/DESIGN.md §10).
    Cert(CertArgs),
    /// Request/reply between programs over mail (docs/DESIGN.md §7).
    Rpc(crate::rpc_cli::RpcArgs),
}

/// `chordmail node`: every option may also come from `--config FILE`; flags win.
#[derive(Debug, Default, Clone, PartialEq, Eq, Args)]
pub struct NodeArgs {
    /// Identifier in [0, 2^bits); default: the hash of --addr (or the id kept in --data).
    #[arg(long)]
    pub id: Option<u64>,
    /// Ring address for node-to-node traffic, HOST:PORT.
    #[arg(long)]
    pub addr: Option<String>,
    /// Bits of the identifier space, 1..=64 (default 64).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub bits: Option<u32>,
    /// Ring address of a member to join through; without it a new ring starts.
    #[arg(long)]
    pub entry_addr: Option<String>,
    /// SMTP listener (default: ring port + 10000).
    #[arg(long)]
    pub smtp: Option<String>,
    /// POP3 listener (default: ring port + 20000).
    #[arg(long)]
    pub pop3: Option<String>,
    /// IMAP listener (default: ring port + 9000).
    #[arg(long)]
    pub imap: Option<String>,
    /// Admin HTTP listener (default: 127.0.0.1, ring port + 3000).
    #[arg(long)]
    pub http: Option<String>,
    /// Data directory (default: ./chordmail-data/HOST_PORT).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Copies of every key (default 3).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub replicas: Option<u64>,
    /// A mail domain the ring serves; repeatable (default: localhost).
    #[arg(long = "domain")]
    pub domains: Vec<String>,
    /// TOML file with any of these options (names as here, `_` for `-`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Name this node gives itself in SMTP greetings and trace headers.
    #[arg(long)]
    pub hostname: Option<String>,
    /// PEM certificate chain for STARTTLS/STLS (default: a self-signed one in --data).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA certificate (`chordmail cert ca`): peers must present a
    /// certificate it signed.
    #[arg(long)]
    pub cluster_ca: Option<PathBuf>,
    /// This node's cluster certificate (`chordmail cert node`).
    #[arg(long)]
    pub cluster_cert: Option<PathBuf>,
    /// The private key of --cluster-cert (mode 0600).
    #[arg(long)]
    pub cluster_key: Option<PathBuf>,
    /// Run the ring port in plaintext without certificates, on any address.
    #[arg(long)]
    pub insecure_ring: bool,
    /// File holding the admin API token (default: DATA/admin.token, made on first start).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Log lines on stderr as plain text (default) or one JSON object per line.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How the node writes its log (`--log-format`, config key `log_format`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// tracing's human-readable lines.
    #[default]
    Text,
    /// One JSON object per line for log shippers: `timestamp`, `level`, `target`,
    /// the event's fields (`message` and the named ones) at the top level, and
    /// `span` with the connection's `name`, `session_id` and `peer`.
    Json,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// Ring port of the first node; node i uses base + i (services: +10000/+20000/+3000).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u16).range(1..=35000))]
    pub base_port: u16,
    /// Directory holding each node's data and log.
    #[arg(long, default_value = "chordmail-data/up")]
    pub data: PathBuf,
}

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub action: UserAction,
    /// Admin URL of any node, e.g. http://127.0.0.1:8000.
    #[arg(long, global = true)]
    pub node: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub action: QueueAction,
    /// Admin URL of any node, e.g. http://127.0.0.1:8000.
    #[arg(long, global = true)]
    pub node: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List the outbound entries the node holds a copy of.
    List,
    /// Try an entry again now.
    Retry { id: String },
    /// Remove an entry without delivering or bouncing it.
    Delete { id: String },
}

/// Where the admin API clients find the token: `--token-file`, else the environment
/// variable `CHORDMAIL_TOKEN`, else the file `chordmail up` writes.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// File holding the node's admin token (e.g. DATA/admin.token).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(subcommand)]
    pub action: CertAction,
}

#[derive(Debug, Subcommand)]
pub enum CertAction {
    /// Make a cluster CA: DIR/ca.crt and DIR/ca.key (0600).
    Ca {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make a node certificate for one ring address: OUT/node.crt and OUT/node.key.
    Node {
        /// The directory of `chordmail cert ca`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The node's ring address (its --addr), HOST:PORT.
        #[arg(long)]
        addr: String,
        /// Where to write node.crt and node.key.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create an account.
    Add(UserWithPassword),
    /// Delete an account (its mailbox is kept).
    Del { address: String },
    /// Change an account's password.
    Passwd(UserWithPassword),
    /// List the accounts.
    List,
}

#[derive(Debug, Args)]
pub struct UserWithPassword {
    pub address: String,
    /// Read the password from this file's first line, or from stdin with `-`.
    #[arg(long)]
    pub password_file: String,
}

#[derive(Debug, Args)]
pub struct RingArgs {
    /// Admin URL of any node, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub node: String,
    /// Print the raw cluster view as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub token: TokenArgs,
}

/// The seed's single-dash spellings (`python chord.py -id 2 -addr ... -bits 3
/// -entry_addr ...`) rewritten to the `--` flags, so that its commands work verbatim.
pub fn normalize_seed_spelling(args: impl IntoIterator<Item = String>) -> Vec<String> {
    const SEED_FLAGS: [(&str, &str); 5] = [
        ("-id", "--id"),
        ("-addr", "--addr"),
        ("-bits", "--bits"),
        ("-entry_addr", "--entry-addr"),
        ("--entry_addr", "--entry-addr"),
    ];
    args.into_iter()
        .map(|arg| {
            for (seed, flag) in SEED_FLAGS {
                if arg == seed {
                    return flag.to_owned();
                }
                if let Some(value) = arg
                    .strip_prefix(seed)
                    .and_then(|rest| rest.strip_prefix('='))
                {
                    return format!("{flag}={value}");
                }
            }
            arg
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_args(line: &str) -> NodeArgs {
        let args = normalize_seed_spelling(line.split_whitespace().map(str::to_owned));
        match Cli::try_parse_from(args).unwrap().command {
            Command::Node(args) => *args,
            other => panic!("expected node, got {other:?}"),
        }
    }

    #[test]
    fn seed_spelling_and_double_dash_spelling_agree() {
        assert_eq!(
            node_args("chordmail node -id 2 -addr 127.0.0.1:5000 -bits 3"),
            node_args("chordmail node --id 2 --addr 127.0.0.1:5000 --bits 3"),
        );
        let joined = node_args(
            "chordmail node -id 2 -addr 127.0.0.1:5002 -bits 3 -entry_addr 127.0.0.1:5000",
        );
        assert_eq!(
            joined,
            node_args(
                "chordmail node --id=2 --addr=127.0.0.1:5002 --bits=3 --entry-addr=127.0.0.1:5000"
            )
        );
        assert_eq!(joined.entry_addr.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!((joined.id, joined.bits), (Some(2), Some(3)));
    }

    #[test]
    fn values_that_look_like_seed_flags_are_left_alone() {
        let args = normalize_seed_spelling([
            "--domain".to_owned(),
            "-idle".to_owned(),
            "-id=4".to_owned(),
        ]);
        assert_eq!(args, ["--domain", "-idle", "--id=4"]);
    }

    #[test]
    fn bad_bits_are_a_usage_error_naming_the_flag() {
        for bits in ["0", "65"] {
            let error =
                Cli::try_parse_from(["chordmail", "node", "--addr", "127.0.0.1:1", "--bits", bits])
                    .unwrap_err();
            assert_eq!(error.exit_code(), 2);
            assert!(error.to_string().contains("--bits"), "{error}");
        }
    }
}
