//! The accept loop: a connection limit, a per-client connection budget, backoff on
//! accept errors, one task and one span per connection, and a drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::budget::{ClientBudget, ClientCounts};

/// A pause after a failed `accept` (e.g. out of file descriptors), so that the
/// loop does not spin while the condition lasts.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// One protocol as the accept loop sees it.
pub trait Shell: Send + Sync + 'static {
    /// Why a connection ended other than by the protocol's own end; logged at debug.
    type Error: std::fmt::Display + Send;

    /// Lower-case protocol name for log events, e.g. `"smtp"`.
    const PROTOCOL: &'static str;

    /// Connections served at once; the one after them is refused.
    fn connections_max(&self) -> usize;

    /// The bytes a peer over the connection limit is sent before it is closed.
    fn refusal(&self) -> Vec<u8>;

    /// How many connections one client address may hold at once, and which
    /// clients are exempt; read once when [`serve`] starts.
    fn client_budget(&self) -> ClientBudget {
        ClientBudget::default()
    }

    /// The bytes a peer over its per-client budget is sent before it is closed:
    /// the same temporary refusal as over the node's limit unless the protocol
    /// has a more precise one.
    fn client_refusal(&self) -> Vec<u8> {
        self.refusal()
    }

    /// The span of one connection. The shell builds it because a span's name must
    /// be a literal (`smtp.session`, `pop3.session`).
    fn span(&self, session_id: &str, peer: SocketAddr) -> tracing::Span;

    /// Serves one connection until it ends; on `shutdown` it says goodbye at its
    /// next read and returns.
    fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        session_id: &str,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Accepts connections on `listener` until `shutdown` is cancelled, each in its
/// own task and span under a fresh 64-bit session id, then waits for the open
/// connections to end (a delivery or an UPDATE in progress completes first).
pub async fn serve<S: Shell>(listener: TcpListener, shell: Arc<S>, shutdown: CancellationToken) {
    let n_connections_max = shell.connections_max();
    assert!(
        n_connections_max > 0,
        "a shell serves at least one connection"
    );
    let permits = Arc::new(Semaphore::new(n_connections_max));
    let budget = shell.client_budget();
    let client_counts = ClientCounts::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(protocol = S::PROTOCOL, %error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Checked before the node's limit, so that one client over its budget
        // never holds a permit another client could use.
        let client_slot = if budget.is_trusted(peer.ip()) {
            None
        } else {
            match client_counts.try_take(peer.ip(), budget.connections_per_client_max) {
                Some(slot) => Some(slot),
                None => {
                    tracing::warn!(protocol = S::PROTOCOL, %peer, "client connection budget reached, refusing");
                    let _ = stream.try_write(&shell.client_refusal());
                    continue;
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse_over_limit(&stream, &shell.refusal(), S::PROTOCOL, peer);
            continue;
        };
        let (shell, shutdown) = (shell.clone(), shutdown.clone());
        let session_id = format!("{:016x}", rand::random::<u64>());
        let span = shell.span(&session_id, peer);
        let open = ConnectionsOpen::count(S::PROTOCOL);
        tokio::spawn(
            async move {
                let _permit = permit;
                let _client_slot = client_slot;
                let _open = open;
                tracing::debug!("connected");
                match shell.handle(stream, peer, &session_id, &shutdown).await {
                    Ok(()) => tracing::debug!("disconnected"),
                    Err(error) => tracing::debug!(%error, "connection ended"),
                }
            }
            .instrument(span),
        );
    }
    tracing::info!(
        protocol = S::PROTOCOL,
        "listener stopped, waiting for open sessions"
    );
    let n_permits = u32::try_from(n_connections_max).expect("connection limit fits in u32");
    let _all_closed = permits.acquire_many(n_permits).await;
}

/// One connection in the `chordmail_{protocol}_connections_*` metrics: counted
/// when accepted, and open until dropped, so that a session ending by error or
/// panic leaves the gauge as surely as one ending by QUIT.
struct ConnectionsOpen(Option<&'static cm_types::metrics::Metric>);

impl ConnectionsOpen {
    fn count(protocol: &str) -> ConnectionsOpen {
        // A shell without metrics of its own (the tests') counts nowhere.
        let Some((accepted, open)) = cm_types::metrics::connections(protocol) else {
            return ConnectionsOpen(None);
        };
        accepted.increment();
        open.increment();
        ConnectionsOpen(Some(open))
    }
}

impl Drop for ConnectionsOpen {
    fn drop(&mut self) {
        if let Some(open) = self.0 {
            open.decrement();
        }
    }
}

/// RFC 5321 §3.1 and RFC 2449 §8.1.2 both let a server refuse at connection time.
/// A fresh socket's send buffer is empty, so a non-blocking write suffices and
/// the accept loop never waits on a peer it is turning away.
fn refuse_over_limit(stream: &TcpStream, refusal: &[u8], protocol: &str, peer: SocketAddr) {
    tracing::warn!(protocol, %peer, "connection limit reached, refusing");
    let _ = stream.try_write(refusal);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Says hello, then holds the connection until the peer closes it or shutdown,
    /// and counts the connections that finished.
    struct Greeter {
        connections_max: usize,
        client_budget: ClientBudget,
        n_finished: AtomicUsize,
        /// How long a connection takes to say goodbye after shutdown.
        goodbye_delay: Duration,
    }

    impl Shell for Greeter {
        type Error = std::io::Error;
        const PROTOCOL: &'static str = "test";

        fn connections_max(&self) -> usize {
            self.connections_max
        }

        fn refusal(&self) -> Vec<u8> {
            b"busy\r\n".to_vec()
        }

        fn client_budget(&self) -> ClientBudget {
            self.client_budget.clone()
        }

        fn client_refusal(&self) -> Vec<u8> {
            b"too many from you\r\n".to_vec()
        }

        fn span(&self, session_id: &str, peer: SocketAddr) -> tracing::Span {
            tracing::info_span!("test.session", session_id, %peer)
        }

        async fn handle(
            &self,
            mut stream: TcpStream,
            _peer: SocketAddr,
            session_id: &str,
            shutdown: &CancellationToken,
        ) -> Result<(), std::io::Error> {
            assert_eq!(session_id.len(), 16);
            stream.write_all(b"hello\r\n").await?;
            let mut byte = [0u8; 1];
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tokio::time::sleep(self.goodbye_delay).await;
                    stream.write_all(b"bye\r\n").await?;
                }
                _ = stream.read(&mut byte) => {}
            }
            self.n_finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    async fn start(
        connections_max: usize,
        goodbye_delay: Duration,
    ) -> (
        SocketAddr,
        Arc<Greeter>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        start_with_budget(connections_max, goodbye_delay, ClientBudget::default()).await
    }

    async fn start_with_budget(
        connections_max: usize,
        goodbye_delay: Duration,
        client_budget: ClientBudget,
    ) -> (
        SocketAddr,
        Arc<Greeter>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shell = Arc::new(Greeter {
            connections_max,
            client_budget,
            n_finished: AtomicUsize::new(0),
            goodbye_delay,
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, shell.clone(), shutdown.clone()));
        (addr, shell, shutdown, task)
    }

    async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
        let mut bytes = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
            .await
            .expect("the server closes in time")
            .unwrap();
        bytes
    }

    async fn read_line(stream: &mut TcpStream) -> Vec<u8> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            let n_read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
                .await
                .expect("the server answers in time")
                .unwrap();
            assert_eq!(n_read, 1, "closed after {line:?}");
            line.push(byte[0]);
        }
        line
    }

    /// Goal: past the limit a peer gets the refusal and is closed, and a freed
    /// permit serves the next peer. Method: limit 1, three connections in turn.
    #[tokio::test]
    async fn refuses_past_the_limit_and_frees_permits() {
        let (addr, shell, _shutdown, _task) = start(1, Duration::ZERO).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_line(&mut first).await, b"hello\r\n");
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_to_end(&mut second).await, b"busy\r\n");
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while shell.n_finished.load(Ordering::SeqCst) < 1 {
            assert!(tokio::time::Instant::now() < deadline, "first never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_line(&mut third).await, b"hello\r\n");
    }

    /// A connection to `addr` from the loopback address `from` (any of 127/8).
    async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Goal: one client address over its budget is refused with the client
    /// refusal while another address is still greeted at once, a closed
    /// connection gives its slot back, and trusted networks have no budget.
    /// Method: budget 2 with no trusted network, clients 127.0.0.2 and 127.0.0.3;
    /// then the default budget (loopback trusted) with 3 connections of budget 2.
    #[tokio::test]
    async fn refuses_a_client_over_its_budget_and_serves_the_others() {
        let strict = ClientBudget {
            connections_per_client_max: 2,
            trusted_networks: Vec::new(),
        };
        let (addr, shell, _shutdown, _task) = start_with_budget(10, Duration::ZERO, strict).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = connect_from([127, 0, 0, 2], addr).await;
            assert_eq!(read_line(&mut stream).await, b"hello\r\n");
            held.push(stream);
        }
        let mut over = connect_from([127, 0, 0, 2], addr).await;
        assert_eq!(read_to_end(&mut over).await, b"too many from you\r\n");
        let mut other = connect_from([127, 0, 0, 3], addr).await;
        assert_eq!(read_line(&mut other).await, b"hello\r\n");
        drop(held.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while shell.n_finished.load(Ordering::SeqCst) < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection never ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut again = connect_from([127, 0, 0, 2], addr).await;
        assert_eq!(read_line(&mut again).await, b"hello\r\n");

        let trusting = ClientBudget {
            connections_per_client_max: 2,
            ..ClientBudget::default()
        };
        let (addr, _shell, _shutdown, _task) =
            start_with_budget(10, Duration::ZERO, trusting).await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            let mut stream = connect_from([127, 0, 0, 2], addr).await;
            assert_eq!(read_line(&mut stream).await, b"hello\r\n");
            streams.push(stream);
        }
    }

    /// Goal: connections are served at once, each in its own task. Method: two
    /// peers both get their greeting while neither has closed.
    #[tokio::test]
    async fn serves_connections_concurrently() {
        let (addr, _shell, _shutdown, _task) = start(2, Duration::ZERO).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_line(&mut second).await, b"hello\r\n");
        assert_eq!(read_line(&mut first).await, b"hello\r\n");
    }

    /// Goal: shutdown stops accepting and `serve` returns only after every open
    /// connection said goodbye. Method: a connection that takes 200 ms to finish
    /// after shutdown; when `serve` returns it has finished, and new peers are
    /// no longer greeted.
    #[tokio::test]
    async fn shutdown_drains_open_connections() {
        let (addr, shell, shutdown, task) = start(4, Duration::from_millis(200)).await;
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_line(&mut open).await, b"hello\r\n");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve returns after the drain")
            .unwrap();
        assert_eq!(shell.n_finished.load(Ordering::SeqCst), 1);
        assert_eq!(read_to_end(&mut open).await, b"bye\r\n");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed once serve returned"
        );
    }
}

#[cfg(test)]
mod connections_open_tests {
    use super::*;

    /// The only test in this crate that counts under a real protocol's name, so
    /// nothing else moves these statics while it runs.
    #[test]
    fn a_connection_is_open_until_dropped() {
        use cm_types::metrics::{IMAP_CONNECTIONS, IMAP_CONNECTIONS_OPEN};
        let (accepted_before, open_before) = (IMAP_CONNECTIONS.get(), IMAP_CONNECTIONS_OPEN.get());
        let first = ConnectionsOpen::count("imap");
        let second = ConnectionsOpen::count("imap");
        assert_eq!(IMAP_CONNECTIONS_OPEN.get(), open_before + 2);
        drop(first);
        assert_eq!(IMAP_CONNECTIONS_OPEN.get(), open_before + 1);
        drop(second);
        assert_eq!(IMAP_CONNECTIONS_OPEN.get(), open_before);
        assert_eq!(IMAP_CONNECTIONS.get(), accepted_before + 2);
        let unknown = ConnectionsOpen::count("test");
        assert!(unknown.0.is_none());
    }
}
