//! The POP3 shell against a real one-node mail service: each semantic rule of
//! docs/DESIGN.md §6 and issue 4 is one test. A session's rules are tested over
//! `tokio::io::duplex` (`Server::duplex`); what needs the accept loop (several
//! sessions, the connection limit, shutdown) over loopback TCP. Waits poll
//! against a deadline.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cm_pop3::{Pop3Config, Pop3Limits, Pop3ServerError, handle_connection, serve};
use cm_repl::Mail;
use cm_types::Address;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader, DuplexStream,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const ALICE: &str = "alice@example.org";
const PASSWORD: &str = "correct horse";
/// How long a released maildrop lock may take to be free again (docs/DESIGN.md §9.3).
const LOCK_RELEASE_DEADLINE: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    config: Pop3Config,
    mail: Mail,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

async fn start_with(config: Pop3Config) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::open_for_tests(dir.path());
    mail.create_account(&Address::parse(ALICE).unwrap(), PASSWORD)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        config.clone(),
        mail.clone(),
        shutdown.clone(),
    ));
    Server {
        addr,
        config,
        mail,
        shutdown,
        task,
        dir,
    }
}

/// A server that offers STLS with a self-signed certificate kept in the returned
/// directory.
async fn start_with_tls() -> (Server, tempfile::TempDir) {
    let cert_dir = tempfile::tempdir().unwrap();
    let tls = cm_tls::server_config(cert_dir.path(), None, None, "localhost").unwrap();
    let server = start_with(Pop3Config {
        tls: Some(tls),
        ..Pop3Config::default()
    })
    .await;
    (server, cert_dir)
}

async fn start() -> Server {
    start_with(Pop3Config {
        auth_failure_delay: Duration::from_millis(10),
        ..Pop3Config::default()
    })
    .await
}

impl Server {
    /// Delivers to Alice. Message ids begin with the arrival millisecond, so two
    /// deliveries in one millisecond would be listed in random order: the helper
    /// lets the clock move past it first, and tests may rely on delivery order.
    async fn deliver(&self, message: &[u8]) -> cm_model::MessageId {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let alice = Address::parse(ALICE).unwrap();
        self.mail
            .deliver(&[alice], bytes::Bytes::copy_from_slice(message))
            .await
            .unwrap()[0]
    }

    /// A session over an in-memory stream, as if from loopback, past the greeting;
    /// the task's outcome is how the session ended.
    async fn duplex(
        &self,
    ) -> (
        Client<DuplexStream>,
        tokio::task::JoinHandle<Result<(), Pop3ServerError>>,
    ) {
        let (client_side, server_side) = tokio::io::duplex(64 * 1024);
        let (config, mail, shutdown) = (
            self.config.clone(),
            self.mail.clone(),
            self.shutdown.clone(),
        );
        let session = tokio::spawn(async move {
            let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
            handle_connection(server_side, loopback, &config, &mail, &shutdown).await
        });
        let mut client = Client {
            stream: BufReader::new(client_side),
        };
        let greeting = client.line().await;
        assert!(greeting.starts_with("+OK"), "{greeting}");
        (client, session)
    }

    async fn duplex_logged_in(&self) -> Client<DuplexStream> {
        let (mut client, _session) = self.duplex().await;
        client.login(ALICE, PASSWORD).await;
        client
    }
}

/// A line-oriented client over any stream (plain TCP or TLS).
struct Client<S> {
    stream: BufReader<S>,
}

impl Client<TcpStream> {
    async fn connect(addr: SocketAddr) -> Client<TcpStream> {
        let mut client = Client {
            stream: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        };
        let greeting = client.line().await;
        assert!(greeting.starts_with("+OK"), "{greeting}");
        client
    }

    async fn logged_in(addr: SocketAddr) -> Client<TcpStream> {
        let mut client = Client::connect(addr).await;
        client.login(ALICE, PASSWORD).await;
        client
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// One reply line without its CRLF; panics on EOF.
    async fn line(&mut self) -> String {
        let mut line = Vec::new();
        let n_read = self.stream.read_until(b'\n', &mut line).await.unwrap();
        assert!(n_read > 0, "connection closed");
        let line = String::from_utf8(line).unwrap();
        line.strip_suffix("\r\n")
            .expect("replies end with CRLF")
            .to_owned()
    }

    async fn command(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes()).await;
        self.line().await
    }

    /// The status line and the unstuffed body of a multi-line reply (RFC 1939 §3).
    async fn multi_line(&mut self, command: &str) -> (String, Vec<u8>) {
        let status = self.command(command).await;
        assert!(status.starts_with("+OK"), "{command}: {status}");
        let mut body = Vec::new();
        loop {
            let mut line = Vec::new();
            self.stream.read_until(b'\n', &mut line).await.unwrap();
            assert!(line.ends_with(b"\r\n"), "unterminated line {line:?}");
            if line == b".\r\n" {
                return (status, body);
            }
            body.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
        }
    }

    async fn lines(&mut self, command: &str) -> Vec<String> {
        let (_, body) = self.multi_line(command).await;
        String::from_utf8(body)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    async fn login(&mut self, user: &str, password: &str) {
        assert_eq!(self.command(&format!("USER {user}")).await, "+OK send PASS");
        let reply = self.command(&format!("PASS {password}")).await;
        assert!(reply.starts_with("+OK maildrop has"), "{reply}");
    }

    /// QUIT, answered with the sign-off (RFC 1939 §6).
    async fn quit(&mut self) {
        assert_eq!(
            self.command("QUIT").await,
            "+OK chordmail POP3 server signing off"
        );
    }

    /// True once the server closed the connection.
    async fn closed(&mut self) -> bool {
        let mut line = Vec::new();
        matches!(
            self.stream.read_until(b'\n', &mut line).await,
            Ok(0) | Err(_)
        )
    }
}

/// Logs in again and again until the maildrop is free or the deadline passes.
async fn login_eventually(addr: SocketAddr) -> Client<TcpStream> {
    let deadline = Instant::now() + LOCK_RELEASE_DEADLINE;
    loop {
        let mut client = Client::connect(addr).await;
        client.command(&format!("USER {ALICE}")).await;
        let reply = client.command(&format!("PASS {PASSWORD}")).await;
        if reply.starts_with("+OK") {
            return client;
        }
        assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
        assert!(
            Instant::now() < deadline,
            "maildrop still locked after {LOCK_RELEASE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs in as soon as the maildrop is free and checks that the one message
/// delivered, `MESSAGE_ONE`, was not removed.
async fn assert_message_one_kept(addr: SocketAddr) {
    let mut client = login_eventually(addr).await;
    assert_eq!(
        client.command("STAT").await,
        format!("+OK 1 {}", MESSAGE_ONE.len())
    );
}

const MESSAGE_ONE: &[u8] = b"Subject: one\r\nFrom: bob@example.org\r\n\r\nfirst body\r\n";
const MESSAGE_TWO: &[u8] = b"Subject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\nline 4\r\n";

// Goal: one session per maildrop. Method: a second login while the first session
// is open gets -ERR [IN-USE]; after the first QUITs, a login succeeds.
#[tokio::test]
async fn second_session_is_in_use_until_quit() {
    let server = start().await;
    let mut first = Client::logged_in(server.addr).await;
    let mut second = Client::connect(server.addr).await;
    second.command(&format!("USER {ALICE}")).await;
    let reply = second.command(&format!("PASS {PASSWORD}")).await;
    assert!(reply.starts_with("-ERR [IN-USE] "), "{reply}");
    // The refused session stays in AUTHORIZATION and may try again.
    first.quit().await;
    assert!(first.closed().await);
    second.command(&format!("USER {ALICE}")).await;
    assert!(
        second
            .command(&format!("PASS {PASSWORD}"))
            .await
            .starts_with("+OK")
    );
}

// Goal: a dropped connection frees the lock. Method: log in, drop the socket
// without QUIT, and log in again within the deadline.
#[tokio::test]
async fn lock_is_freed_when_the_connection_drops() {
    let server = start().await;
    let first = Client::logged_in(server.addr).await;
    drop(first);
    let mut again = login_eventually(server.addr).await;
    again.quit().await;
}

// Goal: RSET unmarks. Method: DELE both messages, check they vanish from STAT,
// LIST and UIDL and that RETR refuses them, RSET, QUIT, and find both again.
#[tokio::test]
async fn dele_then_rset_keeps_everything() {
    let server = start().await;
    server.deliver(MESSAGE_ONE).await;
    server.deliver(MESSAGE_TWO).await;
    let mut client = Client::logged_in(server.addr).await;
    assert_eq!(client.command("DELE 1").await, "+OK message 1 deleted");
    assert_eq!(
        client.command("STAT").await,
        format!("+OK 1 {}", MESSAGE_TWO.len())
    );
    assert_eq!(
        client.lines("LIST").await,
        vec![format!("2 {}", MESSAGE_TWO.len())]
    );
    assert_eq!(client.lines("UIDL").await.len(), 1);
    assert!(client.command("RETR 1").await.starts_with("-ERR"));
    assert!(client.command("DELE 1").await.starts_with("-ERR"));
    assert_eq!(client.command("DELE 2").await, "+OK message 2 deleted");
    assert_eq!(client.command("STAT").await, "+OK 0 0");
    let total = MESSAGE_ONE.len() + MESSAGE_TWO.len();
    assert_eq!(
        client.command("RSET").await,
        format!("+OK maildrop has 2 messages ({total} octets)")
    );
    client.quit().await;
    let mut client = login_eventually(server.addr).await;
    assert_eq!(client.command("STAT").await, format!("+OK 2 {total}"));
}

// Goal: only QUIT removes. Method: DELE, then drop the connection; the next session
// still has the message.
#[tokio::test]
async fn dele_then_dropped_connection_keeps_mail() {
    let server = start().await;
    server.deliver(MESSAGE_ONE).await;
    let mut client = Client::logged_in(server.addr).await;
    assert_eq!(client.command("DELE 1").await, "+OK message 1 deleted");
    drop(client);
    assert_message_one_kept(server.addr).await;
}

// Goal: QUIT after DELE removes exactly the marked messages. Method: two
// messages, DELE 1, QUIT, and the next session sees only the second, renumbered.
#[tokio::test]
async fn dele_then_quit_removes() {
    let server = start().await;
    server.deliver(MESSAGE_ONE).await;
    let second_id = server.deliver(MESSAGE_TWO).await;
    let mut client = Client::logged_in(server.addr).await;
    assert_eq!(client.command("DELE 1").await, "+OK message 1 deleted");
    client.quit().await;
    let mut client = login_eventually(server.addr).await;
    assert_eq!(
        client.command("STAT").await,
        format!("+OK 1 {}", MESSAGE_TWO.len())
    );
    assert_eq!(client.command("UIDL 1").await, format!("+OK 1 {second_id}"));
    let (_, body) = client.multi_line("RETR 1").await;
    assert_eq!(body, MESSAGE_TWO);
}

// Goal: UIDLs are the message ids and do not change between sessions, even when
// numbers do. Method: list UIDLs, delete the first, compare in the next session.
#[tokio::test]
async fn uidl_is_stable_across_sessions() {
    let server = start().await;
    let ids = [
        server.deliver(MESSAGE_ONE).await,
        server.deliver(MESSAGE_TWO).await,
    ];
    let mut client = Client::logged_in(server.addr).await;
    assert_eq!(
        client.lines("UIDL").await,
        vec![format!("1 {}", ids[0]), format!("2 {}", ids[1])]
    );
    client.quit().await;
    let mut client = login_eventually(server.addr).await;
    assert_eq!(
        client.lines("UIDL").await,
        vec![format!("1 {}", ids[0]), format!("2 {}", ids[1])]
    );
    client.command("DELE 1").await;
    client.command("QUIT").await;
    let mut client = login_eventually(server.addr).await;
    assert_eq!(client.lines("UIDL").await, vec![format!("1 {}", ids[1])]);
}

// Goal: TOP n k returns the header, the blank line and k body lines. Method: TOP
// with k from 0 past the end of the body.
#[tokio::test]
async fn top_returns_header_and_k_body_lines() {
    let server = start().await;
    server.deliver(MESSAGE_TWO).await;
    let mut client = server.duplex_logged_in().await;
    let header = "Subject: two\r\n\r\n";
    let table = [
        (0, header.to_owned()),
        (1, format!("{header}line 1\r\n")),
        (3, format!("{header}line 1\r\nline 2\r\nline 3\r\n")),
        (4, String::from_utf8(MESSAGE_TWO.to_vec()).unwrap()),
        (100, String::from_utf8(MESSAGE_TWO.to_vec()).unwrap()),
    ];
    for (n_lines, expected) in table {
        let (_, body) = client.multi_line(&format!("TOP 1 {n_lines}")).await;
        assert_eq!(
            String::from_utf8(body).unwrap(),
            expected,
            "TOP 1 {n_lines}"
        );
    }
    assert!(client.command("TOP 2 1").await.starts_with("-ERR"));
}

// Goal: RETR byte-stuffs and the octet counts are exact. Method: a message with
// lines that start with dots, a lone dot and a big body; LIST's size, RETR's
// octet count and the unstuffed body all equal what was delivered.
#[tokio::test]
async fn retr_byte_stuffing_round_trips_with_exact_sizes() {
    let server = start().await;
    let dotted = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle.\r\n.\r\n".to_vec();
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for line_idx in 0..60_000 {
        if line_idx % 1000 == 0 {
            big.extend_from_slice(b".dot line\r\n");
        }
        big.extend_from_slice(format!("line {line_idx:06} of a big message body\r\n").as_bytes());
    }
    big.extend_from_slice(&vec![b'x'; 100_000]);
    big.extend_from_slice(b"\r\n");
    server.deliver(&dotted).await;
    server.deliver(&big).await;
    let mut client = server.duplex_logged_in().await;
    for (msg, message) in [(1, &dotted), (2, &big)] {
        assert_eq!(
            client.command(&format!("LIST {msg}")).await,
            format!("+OK {msg} {}", message.len())
        );
        let (status, body) = client.multi_line(&format!("RETR {msg}")).await;
        assert_eq!(status, format!("+OK {} octets", message.len()));
        assert!(
            body == *message,
            "message {msg} differs after the round trip"
        );
    }
}

// Goal: RFC 2449's 255-octet line limit. Method: a 300-octet line gets -ERR and
// the commands after it (pipelined in the same write) are answered.
#[tokio::test]
async fn a_too_long_line_is_refused_and_the_session_survives() {
    let server = start().await;
    server.deliver(MESSAGE_ONE).await;
    let mut client = server.duplex_logged_in().await;
    client
        .send(format!("NOOP {}\r\nSTAT\r\n", "x".repeat(300)).as_bytes())
        .await;
    assert_eq!(client.line().await, "-ERR command line too long");
    assert_eq!(client.line().await, format!("+OK 1 {}", MESSAGE_ONE.len()));
    client.send(&vec![b'y'; 100_000]).await;
    client.send(b"\r\nNOOP\r\n").await;
    assert_eq!(client.line().await, "-ERR command line too long");
    assert_eq!(client.line().await, "+OK");
}

// Goal: bad credentials get [AUTH] and the session stays usable; AUTH PLAIN works
// with and without an initial response. Method: wrong password, unknown user,
// then AUTH PLAIN both ways.
#[tokio::test]
async fn logins_with_user_pass_and_auth_plain() {
    let server = start().await;
    let (mut client, _session) = server.duplex().await;
    client.command(&format!("USER {ALICE}")).await;
    let reply = client.command("PASS wrong").await;
    assert_eq!(reply, "-ERR [AUTH] invalid user name or password");
    client.command("USER nobody@example.org").await;
    assert_eq!(
        client.command("PASS x").await,
        "-ERR [AUTH] invalid user name or password"
    );
    // base64("\0alice@example.org\0correct horse")
    let plain = "AGFsaWNlQGV4YW1wbGUub3JnAGNvcnJlY3QgaG9yc2U=";
    assert_eq!(client.command("AUTH PLAIN").await, "+ ");
    assert!(client.command(plain).await.starts_with("+OK maildrop has"));
    client.command("QUIT").await;
    let (mut client, _session) = server.duplex().await;
    let reply = client.command(&format!("AUTH PLAIN {plain}")).await;
    assert!(reply.starts_with("+OK maildrop has"), "{reply}");
}

// Goal: RFC 1939 autologout. Method: a short idle timeout; an idle logged-in
// session is closed without a reply, its DELE is not applied and the lock is free.
#[tokio::test]
async fn idle_session_is_logged_out_and_removes_nothing() {
    let limits = Pop3Limits {
        idle_timeout: Duration::from_millis(300),
        ..Pop3Limits::default()
    };
    let server = start_with(Pop3Config {
        limits,
        ..Pop3Config::default()
    })
    .await;
    server.deliver(MESSAGE_ONE).await;
    let mut client = Client::logged_in(server.addr).await;
    assert_eq!(client.command("DELE 1").await, "+OK message 1 deleted");
    assert!(client.closed().await);
    assert_message_one_kept(server.addr).await;
}

// Goal: shutdown ends open sessions and `serve` returns. Method: cancel the token
// with a session open; the client gets -ERR [SYS/TEMP] and `serve` finishes.
#[tokio::test]
async fn shutdown_ends_sessions_and_serve_returns() {
    let server = start().await;
    let mut client = Client::logged_in(server.addr).await;
    server.shutdown.cancel();
    assert_eq!(client.line().await, "-ERR [SYS/TEMP] server shutting down");
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .unwrap()
        .unwrap();
}

// Goal: the connection limit. Method: limit 1; a second connection gets
// -ERR [SYS/TEMP] and is closed.
#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let limits = Pop3Limits {
        connections_max: 1,
        ..Pop3Limits::default()
    };
    let server = start_with(Pop3Config {
        limits,
        ..Pop3Config::default()
    })
    .await;
    let _first = Client::connect(server.addr).await;
    let mut second = Client {
        stream: BufReader::new(TcpStream::connect(server.addr).await.unwrap()),
    };
    assert_eq!(
        second.line().await,
        "-ERR [SYS/TEMP] too many connections, try again later"
    );
}

// Goal: STLS (RFC 2595). Method: a self-signed certificate from cm-tls; CAPA
// offers STLS, the client upgrades trusting that certificate, and logs in over TLS;
// all over an in-memory stream.
#[tokio::test]
async fn stls_upgrades_the_connection() {
    let (server, cert_dir) = start_with_tls().await;
    server.deliver(MESSAGE_ONE).await;
    let (mut client, session) = server.duplex().await;
    assert!(client.lines("CAPA").await.contains(&"STLS".to_owned()));
    assert_eq!(client.command("STLS").await, "+OK begin TLS negotiation");
    let plain = client.stream.into_inner();
    let mut client = Client {
        stream: BufReader::new(cm_serve::testing::connect_tls(cert_dir.path(), plain).await),
    };
    let capabilities = client.lines("CAPA").await;
    assert!(
        !capabilities.contains(&"STLS".to_owned()) && capabilities.contains(&"USER".to_owned())
    );
    client.login(ALICE, PASSWORD).await;
    let (_, body) = client.multi_line("RETR 1").await;
    assert_eq!(body, MESSAGE_ONE);
    client.quit().await;
    session.await.unwrap().unwrap();
    drop(server.dir);
}

// Goal: commands pipelined behind STLS in clear text are dropped unread (RFC 2595
// §4). Method: STLS and STAT in one write over an in-memory stream; after +OK the
// server answers nothing in clear text, it waits for a TLS handshake.
#[tokio::test]
async fn plaintext_after_stls_is_dropped() {
    let (server, _cert_dir) = start_with_tls().await;
    let (mut client, _session) = server.duplex().await;
    client.send(b"STLS\r\nSTAT\r\n").await;
    assert_eq!(client.line().await, "+OK begin TLS negotiation");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_millis(300),
        client.stream.read_until(b'\n', &mut rest),
    )
    .await;
    assert!(read.is_err(), "no clear-text reply after +OK: {rest:?}");
}

// Goal: the RFC 1939 autologout, exactly. Method: an in-memory stream and paused
// time; a logged-in session with a DELE is closed without a reply once the
// ten minutes passed (not before), and its DELE is not applied.
#[tokio::test]
async fn autologout_after_ten_minutes_over_duplex() {
    let server = start().await;
    server.deliver(MESSAGE_ONE).await;
    let (mut client, session) = server.duplex().await;
    client.login(ALICE, PASSWORD).await;
    assert_eq!(client.command("DELE 1").await, "+OK message 1 deleted");
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let idle_timeout = cm_types::limits::POP3_IDLE_TIMEOUT;
    let closed = tokio::time::timeout(idle_timeout * 2, client.closed()).await;
    assert_eq!(closed, Ok(true), "closed by the autologout");
    assert!(started.elapsed() >= idle_timeout);
    tokio::time::resume();
    assert!(matches!(
        session.await.unwrap(),
        Err(Pop3ServerError::IdleTimeout)
    ));
    assert_message_one_kept(server.addr).await;
}

// Goal: failed logins are answered after a growing delay. Method: a 150 ms step;
// the first failure takes at least one step, the second at least two.
#[tokio::test]
async fn failed_logins_are_delayed_more_each_time() {
    let step = Duration::from_millis(150);
    let server = start_with(Pop3Config {
        auth_failure_delay: step,
        ..Pop3Config::default()
    })
    .await;
    let (mut client, _session) = server.duplex().await;
    for n_failures in 1..=2u32 {
        client.command(&format!("USER {ALICE}")).await;
        let started = Instant::now();
        assert!(
            client
                .command("PASS wrong")
                .await
                .starts_with("-ERR [AUTH]")
        );
        assert!(
            started.elapsed() >= step * n_failures,
            "failure {n_failures} answered too early"
        );
    }
}
