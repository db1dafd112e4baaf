//! The `chordmail` binary: parses the command line, installs the tracing subscriber
//! and runs one subcommand. Exit status: 0 success, 1 runtime failure, 2 bad usage.

mod admin_client;
mod cli;
mod config;
mod node;
mod rpc_cli;
mod trust;
mod up;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let args = cli::normalize_seed_spelling(std::env::args());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    let outcome = match cli.command {
        Command::Node(args) => {
            let config = match config::NodeConfig::resolve(&args) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            init_tracing("info", config.log_format);
            let prepared = match node::prepare(&config) {
                Ok(prepared) => prepared,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            run_async(node::run(config, prepared))
        }
        Command::Cert(args) => return cert(args),
        Command::Up(args) => run_async(up::run(args)),
        Command::User(args) => admin_client::user(args),
        Command::Ring(args) => admin_client::ring(args),
        Command::Queue(args) => admin_client::queue(args),
        // `rpc` runs its own runtime and returns the exit status it wants (the
        // service's status for `call`).
        Command::Rpc(args) => match rpc_cli::run(args) {
            Ok(status) => return ExitCode::from(u8::try_from(status).unwrap_or(1)),
            Err(error) => Err(error),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// `chordmail cert`: the cluster CA and node certificates (docs/DESIGN.md §10).
fn cert(args: cli::CertArgs) -> ExitCode {
    use cm_tls::cluster;
    let outcome = match &args.action {
        cli::CertAction::Ca { dir } => cluster::create_ca(dir).map(|()| {
            println!(
                "wrote {} and {} (keep the key offline; copy ca.crt to every node)",
                dir.join(cluster::CA_CERT_FILE).display(),
                dir.join(cluster::CA_KEY_FILE).display()
            )
        }),
        cli::CertAction::Node { ca_dir, addr, out } => cluster::create_node_cert(ca_dir, addr, out)
            .map(|()| {
                println!(
                    "wrote {} and {} for ring address {addr}",
                    out.join(cluster::NODE_CERT_FILE).display(),
                    out.join(cluster::NODE_KEY_FILE).display()
                )
            }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            let usage = matches!(
                error,
                cm_tls::TlsError::BadAddr { .. }
                    | cm_tls::TlsError::Exists { .. }
                    | cm_tls::TlsError::Readable { .. }
            );
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run_async(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// Logs to stderr; `RUST_LOG` filters (default `default_directive`). Only the binary
/// installs a subscriber (ARCHITECTURE.md, invariants).
fn init_tracing(default_directive: &str, format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_directive));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init();
        }
        // The event's fields at the top level and the innermost span (a
        // connection's `session_id` and `peer`) under `span`: the names a log
        // shipper's rules match, the same for every event. No span list: it would
        // repeat the connection on every line without adding to it.
        cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
