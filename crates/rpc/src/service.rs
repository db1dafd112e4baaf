//! The serving side: poll the service's mailbox, run a handler per request, mail the
//! reply, delete the request once the reply was accepted.
//!
//! The poll loop owns the POP3 sessions and the bookkeeping; each request runs in its
//! own task, at most `concurrency_max` at once, and reports back over a bounded
//! channel. A request is deleted in a later session than the one that fetched it, so
//! a crash at any point leaves it in the mailbox (see [`crate::state`] for why it is
//! then not answered twice).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::message::{self, HEADER_SECTION_BYTES_MAX};
use crate::pop3::Session;
use crate::smtp::{self, Outgoing};
use crate::state::{Record, StateDir};
use crate::{Credentials, MESSAGE_BYTES_MAX, Reply, Request, RpcError, Server, with_failover};

pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
pub const CONCURRENCY_DEFAULT: usize = 16;
/// Configurations may lower the concurrency but not raise it past this.
pub const CONCURRENCY_MAX: usize = 256;
/// A handler running longer than this is abandoned and the caller gets status 124
/// (the `timeout(1)` convention), so a stuck handler cannot hold a slot for ever.
pub const HANDLER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
pub const STATUS_HANDLER_TIMED_OUT: u8 = 124;
/// Status of the reply sent instead of one that would not fit in a mail, or when
/// the handler panicked.
pub const STATUS_SERVICE_FAILED: u8 = 1;
/// Sending a reply is retried this often (with doubling pauses from one second)
/// before the request is left for a later poll to answer from its record.
const REPLY_ATTEMPTS_MAX: u32 = 4;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub servers: Vec<Server>,
    pub credentials: Credentials,
    /// Where replies are recorded; one runner per directory.
    pub state_dir: PathBuf,
    pub concurrency_max: usize,
    pub poll_interval: Duration,
    pub io_timeout: Duration,
    pub handler_timeout: Duration,
}

impl ServiceConfig {
    pub fn new(
        servers: Vec<Server>,
        account: &str,
        password: &str,
        state_dir: PathBuf,
    ) -> ServiceConfig {
        ServiceConfig {
            servers,
            credentials: Credentials {
                account: account.to_owned(),
                password: password.to_owned(),
            },
            state_dir,
            concurrency_max: CONCURRENCY_DEFAULT,
            poll_interval: POLL_INTERVAL_DEFAULT,
            io_timeout: crate::client::IO_TIMEOUT_DEFAULT,
            handler_timeout: HANDLER_TIMEOUT_DEFAULT,
        }
    }
}

pub struct Service {
    config: ServiceConfig,
    state: StateDir,
}

/// How a request task ended, reported to the poll loop.
enum Outcome {
    /// The reply was accepted: delete the request.
    Answered,
    /// The reply could not be sent now: fetch the request again later.
    Retry,
    /// The state directory failed: the runner stops, an operator must look.
    Fatal(RpcError),
}

struct Done {
    uidl: String,
    request_id: String,
    outcome: Outcome,
}

struct Shared<H> {
    config: ServiceConfig,
    state: StateDir,
    handler: H,
    preferred_server_idx: AtomicUsize,
}

impl Service {
    pub fn new(mut config: ServiceConfig) -> Result<Service, RpcError> {
        if config.servers.is_empty() {
            return Err(RpcError::InvalidServer(String::new()));
        }
        if !message::address_is_valid(&config.credentials.account) {
            return Err(RpcError::InvalidAddress(config.credentials.account.clone()));
        }
        config.concurrency_max = config.concurrency_max.clamp(1, CONCURRENCY_MAX);
        let state = StateDir::open(&config.state_dir)?;
        Ok(Service { config, state })
    }

    /// Serves requests until a fatal error: a refused login or a failing state
    /// directory. Server outages are waited out; they are logged, not returned.
    pub async fn run<H, F>(self, handler: H) -> Result<(), RpcError>
    where
        H: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Reply> + Send + 'static,
    {
        let concurrency_max = self.config.concurrency_max;
        let shared = Arc::new(Shared {
            config: self.config,
            state: self.state,
            handler,
            preferred_server_idx: AtomicUsize::new(0),
        });
        let slots = Arc::new(Semaphore::new(concurrency_max));
        // Every task sends exactly one `Done` and holds a slot meanwhile, so this
        // capacity is never exceeded.
        let (done_sender, mut done_receiver) = mpsc::channel::<Done>(concurrency_max);
        let mut loop_state = LoopState::default();
        tracing::info!(account = %shared.config.credentials.account, concurrency_max, "rpc service running");
        loop {
            while let Ok(done) = done_receiver.try_recv() {
                loop_state.finish(done)?;
            }
            match shared
                .poll_once(&mut loop_state, &slots, &done_sender)
                .await
            {
                Ok(()) => {}
                Err(error @ (RpcError::Auth { .. } | RpcError::State { .. })) => return Err(error),
                Err(error) => tracing::warn!(%error, "polling for requests failed; retrying"),
            }
            tokio::time::sleep(shared.config.poll_interval).await;
        }
    }
}

#[derive(Default)]
struct LoopState {
    in_flight_uidls: HashSet<String>,
    in_flight_ids: HashSet<String>,
    /// Requests answered (or duplicates of answered ones), to DELE in the next session.
    to_delete: HashSet<String>,
    /// Mails that are not requests: logged once, left alone.
    ignored: HashSet<String>,
}

impl LoopState {
    fn finish(&mut self, done: Done) -> Result<(), RpcError> {
        self.in_flight_uidls.remove(&done.uidl);
        self.in_flight_ids.remove(&done.request_id);
        match done.outcome {
            Outcome::Answered => {
                self.to_delete.insert(done.uidl);
                Ok(())
            }
            Outcome::Retry => Ok(()),
            Outcome::Fatal(error) => Err(error),
        }
    }
}

impl<H, F> Shared<H>
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    async fn poll_once(
        self: &Arc<Self>,
        loop_state: &mut LoopState,
        slots: &Arc<Semaphore>,
        done_sender: &mpsc::Sender<Done>,
    ) -> Result<(), RpcError> {
        let servers = &self.config.servers;
        let first_idx = self.preferred_server_idx.load(Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..servers.len() {
            let server_idx = (first_idx + offset) % servers.len();
            match self
                .poll_server(&servers[server_idx], loop_state, slots, done_sender)
                .await
            {
                Ok(()) => {
                    self.preferred_server_idx
                        .store(server_idx, Ordering::Relaxed);
                    return Ok(());
                }
                Err(error) if error.is_transient() => {
                    tracing::debug!(server = %servers[server_idx], %error, "poll failed, trying the next server");
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.expect("at least one server was tried"))
    }

    async fn poll_server(
        self: &Arc<Self>,
        server: &Server,
        loop_state: &mut LoopState,
        slots: &Arc<Semaphore>,
        done_sender: &mpsc::Sender<Done>,
    ) -> Result<(), RpcError> {
        let config = &self.config;
        let mut session = Session::open(server, &config.credentials, config.io_timeout).await?;
        let entries = session.entries().await?;
        let listed: HashSet<&str> = entries.iter().map(|entry| entry.uidl.as_str()).collect();
        loop_state
            .ignored
            .retain(|uidl| listed.contains(uidl.as_str()));
        loop_state
            .to_delete
            .retain(|uidl| listed.contains(uidl.as_str()));
        let mut deleted = Vec::new();
        for entry in &entries {
            if loop_state.to_delete.contains(&entry.uidl) {
                session.dele(entry.number).await?;
                deleted.push(entry.uidl.clone());
                continue;
            }
            if loop_state.in_flight_uidls.contains(&entry.uidl)
                || loop_state.ignored.contains(&entry.uidl)
            {
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            if entry.size > (MESSAGE_BYTES_MAX + HEADER_SECTION_BYTES_MAX) as u64 {
                tracing::warn!(uidl = %entry.uidl, size = entry.size, "mail too large to be a request; ignored");
                loop_state.ignored.insert(entry.uidl.clone());
                continue;
            }
            let mail = session
                .retr(entry.number, MESSAGE_BYTES_MAX + HEADER_SECTION_BYTES_MAX)
                .await?;
            let request = match message::parse_request(&mail) {
                Ok(request) => request,
                Err(reason) => {
                    tracing::warn!(uidl = %entry.uidl, reason, "mail in the service mailbox is no valid request; ignored");
                    loop_state.ignored.insert(entry.uidl.clone());
                    continue;
                }
            };
            if loop_state.in_flight_ids.contains(&request.id) {
                // Another copy of a request being served; its outcome decides for this one.
                continue;
            }
            let existing = self.load_record(&request.id).await?;
            let recorded_reply = match existing {
                Some(Record::Sent { status }) => {
                    tracing::info!(request_id = %request.id, status, "request already answered; deleting it without a second reply");
                    session.dele(entry.number).await?;
                    deleted.push(entry.uidl.clone());
                    continue;
                }
                Some(Record::Pending(reply)) => Some(reply),
                None => None,
            };
            loop_state.in_flight_uidls.insert(entry.uidl.clone());
            loop_state.in_flight_ids.insert(request.id.clone());
            let task = Arc::clone(self);
            let done_sender = done_sender.clone();
            let uidl = entry.uidl.clone();
            tokio::spawn(async move {
                let request_id = request.id.clone();
                let outcome = task.serve(request, recorded_reply).await;
                let _ = done_sender
                    .send(Done {
                        uidl,
                        request_id,
                        outcome,
                    })
                    .await;
                // Released only now, so that at most `concurrency_max` tasks ever
                // wait to send into the channel of that capacity.
                drop(slot);
            });
        }
        session.quit().await?;
        for uidl in deleted {
            loop_state.to_delete.remove(&uidl);
        }
        Ok(())
    }

    async fn load_record(&self, request_id: &str) -> Result<Option<Record>, RpcError> {
        let state = self.state.clone();
        let request_id = request_id.to_owned();
        tokio::task::spawn_blocking(move || state.load(&request_id))
            .await
            .expect("loading a record does not panic")
    }

    async fn store_record(&self, request_id: &str, record: Record) -> Result<(), RpcError> {
        let state = self.state.clone();
        let request_id = request_id.to_owned();
        tokio::task::spawn_blocking(move || state.store(&request_id, &record))
            .await
            .expect("storing a record does not panic")
    }

    /// Runs the handler (unless a reply is recorded), records the reply, sends it.
    async fn serve(self: Arc<Self>, request: Request, recorded_reply: Option<Reply>) -> Outcome {
        let reply = match recorded_reply {
            Some(reply) => {
                tracing::info!(request_id = %request.id, status = reply.status, "resending the recorded reply");
                reply
            }
            None => {
                let reply = self.run_handler(&request).await;
                if let Err(error) = self
                    .store_record(&request.id, Record::Pending(reply.clone()))
                    .await
                {
                    return Outcome::Fatal(error);
                }
                reply
            }
        };
        let account = &self.config.credentials.account;
        let mut mail = message::build_reply(account, &request, &reply);
        if mail.bytes.len() > MESSAGE_BYTES_MAX {
            tracing::warn!(request_id = %request.id, bytes = reply.body.len(), "reply too large for a mail; sending an error instead");
            let error_reply = Reply {
                status: STATUS_SERVICE_FAILED,
                body: format!(
                    "the reply of {} bytes exceeds the message size limit\n",
                    reply.body.len()
                )
                .into_bytes(),
            };
            mail = message::build_reply(account, &request, &error_reply);
        }
        let outgoing = Outgoing {
            from: account,
            to: &request.sender,
            message: &mail.bytes,
            eight_bit: mail.eight_bit,
        };
        let mut pause = Duration::from_secs(1);
        for attempt in 1..=REPLY_ATTEMPTS_MAX {
            let first_idx = self.preferred_server_idx.load(Ordering::Relaxed);
            let sent = with_failover(&self.config.servers, first_idx, |server| {
                smtp::submit(
                    server,
                    &self.config.credentials,
                    &outgoing,
                    self.config.io_timeout,
                )
            })
            .await;
            match sent {
                Ok(_) => {
                    tracing::info!(request_id = %request.id, method = %request.method, sender = %request.sender, status = reply.status, "replied");
                    break;
                }
                Err(error)
                    if error.is_transient() || matches!(error, RpcError::Unreachable { .. }) =>
                {
                    tracing::warn!(request_id = %request.id, attempt, %error, "sending the reply failed");
                    if attempt == REPLY_ATTEMPTS_MAX {
                        return Outcome::Retry;
                    }
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(error) => {
                    // A permanent refusal (say, the sender's account is gone) would be
                    // the same next time; the request is dropped so as not to loop.
                    tracing::error!(request_id = %request.id, %error, "reply refused for good; dropping the request");
                    break;
                }
            }
        }
        match self
            .store_record(
                &request.id,
                Record::Sent {
                    status: reply.status,
                },
            )
            .await
        {
            Ok(()) => Outcome::Answered,
            Err(error) => Outcome::Fatal(error),
        }
    }

    /// The handler in its own task, so that a panic or a timeout ends only it.
    async fn run_handler(&self, request: &Request) -> Reply {
        tracing::debug!(request_id = %request.id, method = %request.method, sender = %request.sender, "handling request");
        let mut task = tokio::spawn((self.handler)(request.clone()));
        match tokio::time::timeout(self.config.handler_timeout, &mut task).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                tracing::error!(request_id = %request.id, %error, "handler failed");
                Reply {
                    status: STATUS_SERVICE_FAILED,
                    body: b"the service failed on this request\n".to_vec(),
                }
            }
            Err(_) => {
                task.abort();
                tracing::warn!(request_id = %request.id, "handler timed out");
                Reply {
                    status: STATUS_HANDLER_TIMED_OUT,
                    body: b"the service timed out on this request\n".to_vec(),
                }
            }
        }
    }
}
