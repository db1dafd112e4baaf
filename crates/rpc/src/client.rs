//! The calling side: send a request, poll the caller's own mailbox for its reply.
//!
//! One [`Client`] may run many calls at once. They share one poller (a POP3 server
//! locks a maildrop per session, so concurrent sessions of one account would only
//! refuse each other): whichever call polls hands every reply it finds to the call
//! that waits for it. Replies to other calls, of this client or of other programs
//! using the same account, are left in the mailbox for them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::message::{self, HEADER_SECTION_BYTES_MAX};
use crate::pop3::Session;
use crate::smtp::{self, Outgoing};
use crate::{Credentials, MESSAGE_BYTES_MAX, Reply, RpcError, Server, with_failover};

/// How often a waiting client looks into its mailbox; the latency/load trade-off.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// Bound on every single network step (connect, one command and its answer).
pub const IO_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Calls one client runs at once; more wait for a slot (within their own timeout).
pub const CALLS_IN_FLIGHT_MAX: usize = 1024;
/// Request ids of finished calls remembered so that a late duplicate of their reply
/// is deleted instead of lingering for ever.
const FINISHED_IDS_MAX: usize = 4096;
/// The longest pause between two attempts to send a request.
const SEND_PAUSE_MAX: Duration = Duration::from_secs(2);
/// Replies fetched in one poll; the rest wait for the next poll.
const RETRIEVALS_PER_POLL_MAX: usize = 256;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Tried in order when one is down; the one that last worked is tried first.
    pub servers: Vec<Server>,
    pub credentials: Credentials,
    pub poll_interval: Duration,
    pub io_timeout: Duration,
}

impl ClientConfig {
    pub fn new(servers: Vec<Server>, account: &str, password: &str) -> ClientConfig {
        ClientConfig {
            servers,
            credentials: Credentials {
                account: account.to_owned(),
                password: password.to_owned(),
            },
            poll_interval: POLL_INTERVAL_DEFAULT,
            io_timeout: IO_TIMEOUT_DEFAULT,
        }
    }
}

/// A handle to a caller's account; cheap to clone, calls may run concurrently.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    preferred_server_idx: AtomicUsize,
    /// Pending calls by request id, with the reply once a poller found it. A std
    /// mutex: it is held only to insert or take, never across an await.
    waiting: Mutex<Waiting>,
    /// Held by the one call that is polling; a tokio mutex since it spans the session.
    poller: tokio::sync::Mutex<PollState>,
    call_slots: Semaphore,
}

#[derive(Default)]
struct Waiting {
    pending: HashMap<String, Option<Reply>>,
    finished: VecDeque<String>,
    finished_set: HashSet<String>,
}

struct PollState {
    last_poll_at: Option<Instant>,
    /// What each mail (by UIDL) answers, from its headers: `None` if it is no reply.
    /// Saves a TOP per mail per poll; pruned to the mails still listed.
    targets: HashMap<String, Option<String>>,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, RpcError> {
        if config.servers.is_empty() {
            return Err(RpcError::InvalidServer(String::new()));
        }
        if !message::address_is_valid(&config.credentials.account) {
            return Err(RpcError::InvalidAddress(config.credentials.account.clone()));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                preferred_server_idx: AtomicUsize::new(0),
                waiting: Mutex::new(Waiting::default()),
                poller: tokio::sync::Mutex::new(PollState {
                    last_poll_at: None,
                    targets: HashMap::new(),
                }),
                call_slots: Semaphore::new(CALLS_IN_FLIGHT_MAX),
            }),
        })
    }

    /// Sends `body` to the service at `to` as method `method` and waits up to
    /// `timeout` (sending included) for the reply.
    pub async fn call(
        &self,
        to: &str,
        method: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Reply, RpcError> {
        let deadline = Instant::now() + timeout;
        let config = &self.inner.config;
        if !message::address_is_valid(to) {
            return Err(RpcError::InvalidAddress(to.to_owned()));
        }
        if !message::method_is_valid(method) {
            return Err(RpcError::InvalidMethod(method.to_owned()));
        }
        let request_id = message::new_message_id(&config.credentials.account);
        let mail =
            message::build_request(&config.credentials.account, to, &request_id, method, body);
        if mail.bytes.len() > MESSAGE_BYTES_MAX {
            return Err(RpcError::TooLarge {
                encoded_bytes: mail.bytes.len(),
                bytes_max: MESSAGE_BYTES_MAX,
            });
        }
        let timed_out = || RpcError::Timeout {
            request_id: request_id.clone(),
            timeout,
        };
        let _slot = tokio::time::timeout_at(deadline, self.inner.call_slots.acquire())
            .await
            .map_err(|_| timed_out())?
            .expect("the semaphore is never closed");
        let _registration = Registration::new(&self.inner, &request_id);
        let outgoing = Outgoing {
            from: &config.credentials.account,
            to,
            message: &mail.bytes,
            eight_bit: mail.eight_bit,
        };
        self.send_until(&outgoing, deadline).await?;
        tracing::debug!(%request_id, method, to, "request sent");
        loop {
            if let Some(reply) = self.inner.take_reply(&request_id) {
                return Ok(reply);
            }
            let mut poll_state = tokio::time::timeout_at(deadline, self.inner.poller.lock())
                .await
                .map_err(|_| timed_out())?;
            // Another call may have found our reply while we waited for the poller.
            if let Some(reply) = self.inner.take_reply(&request_id) {
                return Ok(reply);
            }
            let next_poll_at = poll_state
                .last_poll_at
                .map_or_else(Instant::now, |at| at + config.poll_interval);
            if next_poll_at >= deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(timed_out());
            }
            tokio::time::sleep_until(next_poll_at).await;
            let poll =
                tokio::time::timeout_at(deadline, self.inner.poll_once(&mut poll_state)).await;
            poll_state.last_poll_at = Some(Instant::now());
            match poll {
                Err(_) => return self.inner.take_reply(&request_id).ok_or_else(timed_out),
                Ok(Ok(())) => {}
                Ok(Err(error @ RpcError::Auth { .. })) => return Err(error),
                Ok(Err(error)) => tracing::warn!(%error, "polling for replies failed; retrying"),
            }
        }
    }
}

impl Client {
    /// Submits the request, retrying transient failures until the deadline. A retry
    /// after a lost 250 only duplicates the request under the same Message-ID, which
    /// the service answers once.
    async fn send_until(&self, outgoing: &Outgoing<'_>, deadline: Instant) -> Result<(), RpcError> {
        let config = &self.inner.config;
        let mut pause = config.poll_interval;
        loop {
            let first_idx = self.inner.preferred_server_idx.load(Ordering::Relaxed);
            let send = with_failover(&config.servers, first_idx, |server| {
                smtp::submit(server, &config.credentials, outgoing, config.io_timeout)
            });
            let error = match tokio::time::timeout_at(deadline, send).await {
                Ok(Ok((server_idx, ()))) => {
                    self.inner
                        .preferred_server_idx
                        .store(server_idx, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Err(error)) if error.is_retryable() => error,
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    return Err(RpcError::Protocol {
                        peer: config.servers[0].smtp_addr(),
                        detail: "the request could not be sent before the call's timeout"
                            .to_owned(),
                    });
                }
            };
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tracing::warn!(%error, "sending the request failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(SEND_PAUSE_MAX);
        }
    }
}

/// Registers a pending call; dropping it (reply, error, timeout or cancellation)
/// forgets the call and remembers its id as finished.
struct Registration<'a> {
    inner: &'a Inner,
    request_id: String,
}

impl<'a> Registration<'a> {
    fn new(inner: &'a Inner, request_id: &str) -> Registration<'a> {
        let mut waiting = inner.waiting.lock().expect("waiting lock");
        let previous = waiting.pending.insert(request_id.to_owned(), None);
        assert!(previous.is_none(), "request ids are 128 random bits");
        Registration {
            inner,
            request_id: request_id.to_owned(),
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiting = self.inner.waiting.lock().expect("waiting lock");
        waiting.pending.remove(&self.request_id);
        if waiting.finished.len() >= FINISHED_IDS_MAX
            && let Some(oldest) = waiting.finished.pop_front()
        {
            waiting.finished_set.remove(&oldest);
        }
        waiting.finished.push_back(self.request_id.clone());
        waiting.finished_set.insert(self.request_id.clone());
    }
}

/// What to do with one listed mail in a poll.
enum Disposition {
    Leave,
    Retrieve,
    /// A copy of a reply to a call that already ended: nobody will ever take it.
    DeleteStale,
}

impl Inner {
    fn take_reply(&self, request_id: &str) -> Option<Reply> {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        waiting.pending.get_mut(request_id).and_then(Option::take)
    }

    fn disposition(&self, target: Option<&str>) -> Disposition {
        let Some(target) = target else {
            return Disposition::Leave;
        };
        let waiting = self.waiting.lock().expect("waiting lock");
        match waiting.pending.get(target) {
            Some(None) => Disposition::Retrieve,
            Some(Some(_)) => Disposition::DeleteStale,
            None if waiting.finished_set.contains(target) => Disposition::DeleteStale,
            None => Disposition::Leave,
        }
    }

    /// One POP3 session: find replies to pending calls, hand them over, delete them.
    async fn poll_once(&self, poll_state: &mut PollState) -> Result<(), RpcError> {
        let servers = &self.config.servers;
        let first_idx = self.preferred_server_idx.load(Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..servers.len() {
            let server_idx = (first_idx + offset) % servers.len();
            match self.poll_server(&servers[server_idx], poll_state).await {
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
        &self,
        server: &Server,
        poll_state: &mut PollState,
    ) -> Result<(), RpcError> {
        let config = &self.config;
        let mut session = Session::open(server, &config.credentials, config.io_timeout).await?;
        let entries = session.entries().await?;
        let listed: HashSet<&str> = entries.iter().map(|entry| entry.uidl.as_str()).collect();
        poll_state
            .targets
            .retain(|uidl, _| listed.contains(uidl.as_str()));
        let mut found = Vec::new();
        let mut n_retrievals = 0;
        for entry in &entries {
            if !poll_state.targets.contains_key(&entry.uidl) {
                let section = session.top(entry.number, HEADER_SECTION_BYTES_MAX).await?;
                let target = message::reply_target(&section);
                if let Err(reason) = &target {
                    tracing::debug!(uidl = %entry.uidl, reason, "mail in the caller's mailbox is no rpc reply; left alone");
                }
                poll_state.targets.insert(entry.uidl.clone(), target.ok());
            }
            let target = poll_state.targets[&entry.uidl].as_deref();
            match self.disposition(target) {
                Disposition::Leave => {}
                Disposition::DeleteStale => {
                    tracing::info!(uidl = %entry.uidl, request_id = target, "deleting a reply to a call that already ended");
                    session.dele(entry.number).await?;
                }
                Disposition::Retrieve if n_retrievals >= RETRIEVALS_PER_POLL_MAX => {}
                Disposition::Retrieve => {
                    n_retrievals += 1;
                    if entry.size > (MESSAGE_BYTES_MAX + HEADER_SECTION_BYTES_MAX) as u64 {
                        tracing::warn!(uidl = %entry.uidl, size = entry.size, "reply too large; left alone");
                        poll_state.targets.insert(entry.uidl.clone(), None);
                        continue;
                    }
                    let mail = session
                        .retr(entry.number, MESSAGE_BYTES_MAX + HEADER_SECTION_BYTES_MAX)
                        .await?;
                    match message::parse_reply(&mail) {
                        Ok((request_id, reply)) if Some(request_id.as_str()) == target => {
                            session.dele(entry.number).await?;
                            found.push((request_id, reply));
                        }
                        Ok(_) | Err(_) => {
                            tracing::warn!(uidl = %entry.uidl, "malformed rpc reply ignored and left alone");
                            poll_state.targets.insert(entry.uidl.clone(), None);
                        }
                    }
                }
            }
        }
        // Replies are handed over even if QUIT fails: the copies left behind are then
        // replies to finished calls, deleted by a later poll.
        let quit = session.quit().await;
        if !found.is_empty() {
            let mut waiting = self.waiting.lock().expect("waiting lock");
            for (request_id, reply) in found {
                if let Some(slot) = waiting.pending.get_mut(&request_id) {
                    *slot = Some(reply);
                }
            }
        }
        if let Err(error) = quit {
            tracing::warn!(%error, "QUIT failed; delivered replies may be seen again");
        }
        Ok(())
    }
}
