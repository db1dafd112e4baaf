//! An echo service through the library: every request's body comes back unchanged,
//! with status 0.
//!
//! `cargo run -p cm-rpc --example echo_service -- 127.0.0.1:15000 echo@localhost PASSWORD`

use std::time::Duration;

use cm_rpc::{Reply, Service, ServiceConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let usage = "usage: echo_service HOST:SMTP_PORT[/POP3_PORT] ACCOUNT PASSWORD [STATE_DIR]";
    let (Some(server), Some(account), Some(password)) = (args.next(), args.next(), args.next())
    else {
        anyhow::bail!("{usage}");
    };
    let state_dir = args
        .next()
        .unwrap_or_else(|| format!("chordmail-rpc-state/{account}"));
    let mut config =
        ServiceConfig::new(vec![server.parse()?], &account, &password, state_dir.into());
    config.poll_interval = Duration::from_millis(100);
    let service = Service::new(config)?;
    service
        .run(|request| async move {
            Reply {
                status: 0,
                body: request.body,
            }
        })
        .await?;
    Ok(())
}
