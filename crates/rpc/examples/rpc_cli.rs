//! `chordmail rpc` as a standalone binary, until the `chordmail` binary carries it:
//! `cargo run -p cm-rpc --example rpc_cli -- call --server 127.0.0.1:15000 ...`.

use clap::Parser as _;

#[derive(clap::Parser)]
#[command(name = "rpc_cli", about = "Request/reply over mail (chordmail rpc)")]
struct Cli {
    #[command(flatten)]
    rpc: cm_rpc::cli::RpcArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cm_rpc::cli::run(cli.rpc) {
        Ok(status) => std::process::ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}
