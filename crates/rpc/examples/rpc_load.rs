//! A load generator for an echo service: `calls` calls, `concurrency` at a time, from
//! one account; checks that every reply carries exactly its own request's body and
//! prints one JSON line with the counts and latencies. Used by `tests/test_rpc.py`
//! and `tools/bench/rpc.py`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use cm_rpc::{Client, ClientConfig, Server};

#[derive(clap::Parser)]
struct Args {
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    #[arg(long)]
    account: String,
    #[arg(long)]
    password: String,
    #[arg(long)]
    to: String,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    calls: u32,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let servers = args
        .servers
        .iter()
        .map(|text| text.parse::<Server>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = ClientConfig::new(servers, &args.account, &args.password);
    config.poll_interval = Duration::from_millis(args.poll_ms);
    let client = Client::new(config)?;
    let next_call_idx = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let next_call_idx = Arc::clone(&next_call_idx);
        let (account, to, n_calls, timeout) = (
            args.account.clone(),
            args.to.clone(),
            args.calls,
            args.timeout_s,
        );
        workers.spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let call_idx = next_call_idx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if call_idx >= n_calls {
                    return outcomes;
                }
                let body = format!("{account} call {call_idx} {}\n", rand::random::<u64>());
                let call_started = Instant::now();
                let outcome = client
                    .call(&to, "echo", body.as_bytes(), Duration::from_secs(timeout))
                    .await;
                let latency_ms = call_started.elapsed().as_secs_f64() * 1000.0;
                let verdict = match outcome {
                    Ok(reply) if reply.status == 0 && reply.body == body.as_bytes() => "ok",
                    Ok(_) => "mismatched",
                    Err(error) => {
                        eprintln!("call {call_idx} failed: {error}");
                        "failed"
                    }
                };
                outcomes.push((verdict, latency_ms));
            }
        });
    }
    let mut outcomes = Vec::new();
    while let Some(worker) = workers.join_next().await {
        outcomes.extend(worker?);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let count = |verdict: &str| outcomes.iter().filter(|(seen, _)| *seen == verdict).count();
    let (n_ok, n_mismatched, n_failed) = (count("ok"), count("mismatched"), count("failed"));
    let latencies: Vec<String> = outcomes
        .iter()
        .map(|(_, latency)| format!("{latency:.1}"))
        .collect();
    println!(
        "{{\"calls\": {}, \"ok\": {n_ok}, \"mismatched\": {n_mismatched}, \"failed\": {n_failed}, \"elapsed_s\": {elapsed_s:.3}, \"latencies_ms\": [{}]}}",
        outcomes.len(),
        latencies.join(", ")
    );
    std::process::exit(if n_ok == outcomes.len() { 0 } else { 1 });
}
