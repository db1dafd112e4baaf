//! `chordmail rpc call|serve`: the middleware of `cm-rpc` from the shell (docs/DESIGN.md §7).
//! It lives in the binary so that the library needs no clap and installs no
//! tracing subscriber.
//!
//! `call` reads the request body from stdin, prints the reply's body and exits with
//! the reply's status; `serve` runs a command per request with the body on stdin and
//! `CHORDMAIL_RPC_METHOD`, `CHORDMAIL_RPC_SENDER` and `CHORDMAIL_RPC_REQUEST_ID` in
//! its environment, and replies with its stdout and exit status.

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use cm_rpc::service::{CONCURRENCY_DEFAULT, CONCURRENCY_MAX, STATUS_SERVICE_FAILED};
use cm_rpc::{
    Client, ClientConfig, MESSAGE_BYTES_MAX, Reply, Request, Server, Service, ServiceConfig,
};

pub const ENV_METHOD: &str = "CHORDMAIL_RPC_METHOD";
pub const ENV_SENDER: &str = "CHORDMAIL_RPC_SENDER";
pub const ENV_REQUEST_ID: &str = "CHORDMAIL_RPC_REQUEST_ID";
/// Status of a reply whose command could not be started (the shell's convention).
pub const STATUS_COMMAND_NOT_RUN: u8 = 127;

#[derive(Debug, clap::Args)]
pub struct RpcArgs {
    #[command(subcommand)]
    pub command: RpcCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum RpcCommand {
    /// Send stdin as a request to a service and print its reply; exit with its status.
    Call(CallArgs),
    /// Serve requests mailed to an account by running a command for each one.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConnectionArgs {
    /// Mail server as HOST (SMTP 25, POP3 110), HOST:SMTP (POP3 at SMTP + 10000, the
    /// chordmail layout, e.g. 127.0.0.1:15000) or HOST:SMTP/POP3; repeat it to fail
    /// over to the next server when one is down.
    #[arg(long = "server", required = true, value_name = "HOST[:SMTP[/POP3]]")]
    pub servers: Vec<String>,
    /// The account to send from and poll, e.g. me@localhost.
    #[arg(long)]
    pub account: String,
    /// Read the password from this file's first line, or from stdin's first line with `-`
    /// (for `call`, the request body then follows on the next lines).
    #[arg(long, value_name = "F|-")]
    pub password_file: String,
    /// Milliseconds between two looks into the mailbox.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// The service's address.
    #[arg(long)]
    pub to: String,
    /// The method, 1 to 64 characters from A-Z a-z 0-9 . _ - / :
    #[arg(long, default_value = "call")]
    pub method: String,
    /// Seconds to wait for the reply, sending included.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Directory recording replies, so that a request seen again is not run again
    /// (default: chordmail-rpc-state/ACCOUNT). One runner per directory.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Requests run at the same time.
    #[arg(long, default_value_t = CONCURRENCY_DEFAULT, value_parser = parse_concurrency)]
    pub concurrency: usize,
    /// Seconds a command may run before it is killed and status 124 is sent.
    #[arg(long, default_value_t = 300)]
    pub handler_timeout: u64,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD ARGS")]
    pub command: Vec<String>,
}

fn parse_concurrency(text: &str) -> Result<usize, String> {
    let value: usize = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (1..=CONCURRENCY_MAX).contains(&value) {
        Ok(value)
    } else {
        Err(format!("use 1..={}", CONCURRENCY_MAX))
    }
}

/// Runs `chordmail rpc ...`; the `Ok` value is the process's exit status.
pub fn run(args: RpcArgs) -> anyhow::Result<i32> {
    let default_level = match args.command {
        RpcCommand::Call(_) => "warn",
        RpcCommand::Serve(_) => "info",
    };
    crate::init_tracing(default_level, crate::cli::LogFormat::Text);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match args.command {
        RpcCommand::Call(args) => call(args, &runtime),
        RpcCommand::Serve(args) => serve(args, &runtime),
    }
}

fn parse_servers(texts: &[String]) -> anyhow::Result<Vec<Server>> {
    texts
        .iter()
        .map(|text| text.parse::<Server>().map_err(anyhow::Error::from))
        .collect()
}

fn read_password_line(reader: &mut dyn std::io::BufRead, origin: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    reader
        .take(4096)
        .read_line(&mut line)
        .with_context(|| format!("reading the password from {origin}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password in {origin}: put it on the first line");
    }
    Ok(password)
}

/// The password, and whether it came from (and consumed the first line of) stdin.
fn read_password(password_file: &str, stdin: &mut dyn std::io::BufRead) -> anyhow::Result<String> {
    if password_file == "-" {
        return read_password_line(stdin, "stdin");
    }
    let file = std::fs::File::open(password_file)
        .with_context(|| format!("opening the password file {password_file}"))?;
    read_password_line(&mut std::io::BufReader::new(file), password_file)
}

fn call(args: CallArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<i32> {
    let servers = parse_servers(&args.connection.servers)?;
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 86_400.0) {
        bail!(
            "--timeout must be between 0 and 86400 seconds, got {}",
            args.timeout
        );
    }
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    let password = read_password(&args.connection.password_file, &mut stdin)?;
    let mut body = Vec::new();
    // One byte more than the limit tells an oversized body from one that fits.
    (&mut stdin)
        .take(MESSAGE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut body)
        .context("reading the request body from stdin")?;
    if body.len() > MESSAGE_BYTES_MAX {
        bail!(
            "the request body exceeds the {MESSAGE_BYTES_MAX}-byte message size limit; send less"
        );
    }
    let mut config = ClientConfig::new(servers, &args.connection.account, &password);
    config.poll_interval = Duration::from_millis(args.connection.poll_ms);
    let client = Client::new(config)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let reply = runtime.block_on(client.call(&args.to, &args.method, &body, timeout))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&reply.body)
        .and_then(|()| stdout.flush())
        .context("writing the reply to stdout")?;
    Ok(i32::from(reply.status))
}

fn serve(args: ServeArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<i32> {
    let servers = parse_servers(&args.connection.servers)?;
    let password = read_password(&args.connection.password_file, &mut std::io::stdin().lock())?;
    let account = args.connection.account.clone();
    let state_dir = args
        .state
        .unwrap_or_else(|| PathBuf::from("chordmail-rpc-state").join(&account));
    let mut config = ServiceConfig::new(servers, &account, &password, state_dir);
    config.poll_interval = Duration::from_millis(args.connection.poll_ms);
    config.concurrency_max = args.concurrency;
    config.handler_timeout = Duration::from_secs(args.handler_timeout.max(1));
    let service = Service::new(config)?;
    let command = args.command;
    runtime.block_on(async move {
        let handler = move |request: Request| run_command(command.clone(), request);
        tokio::select! {
            outcome = service.run(handler) => outcome.map(|()| 0).map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => {
                // Requests being served stay in the mailbox and are served after a restart.
                tracing::info!("interrupted; stopping");
                Ok(0)
            }
        }
    })
}

/// Runs the command for one request: body on stdin, stdout (bounded) as the reply.
async fn run_command(command: Vec<String>, request: Request) -> Reply {
    let (program, arguments) = command.split_first().expect("clap requires a command");
    let spawned = tokio::process::Command::new(program)
        .args(arguments)
        .env(ENV_METHOD, &request.method)
        .env(ENV_SENDER, &request.sender)
        .env(ENV_REQUEST_ID, &request.id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(program, %error, "cannot start the service command");
            return Reply {
                status: STATUS_COMMAND_NOT_RUN,
                body: format!("the service cannot run its command: {error}\n").into_bytes(),
            };
        }
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let body = request.body;
    // Written concurrently with reading stdout, so that neither pipe can fill up
    // and block the other side; a command that ignores its input is fine.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let mut output = Vec::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    let read = stdout
        .take(MESSAGE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut output)
        .await;
    if read.is_err() || output.len() > MESSAGE_BYTES_MAX {
        let _ = child.kill().await;
        writer.abort();
        return Reply {
            status: STATUS_SERVICE_FAILED,
            body: b"the service command wrote more than the message size limit\n".to_vec(),
        };
    }
    let _ = writer.await;
    let status = match child.wait().await {
        Ok(status) => exit_status_byte(status),
        Err(error) => {
            tracing::error!(%error, "waiting for the service command failed");
            STATUS_SERVICE_FAILED
        }
    };
    Reply {
        status,
        body: output,
    }
}

/// The exit code, or 128 + the signal number as a shell reports a killed command.
fn exit_status_byte(status: std::process::ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).expect("masked to a byte");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(signal) = status.signal() {
            return u8::try_from((128 + signal) & 0xff).expect("masked to a byte");
        }
    }
    STATUS_SERVICE_FAILED
}
