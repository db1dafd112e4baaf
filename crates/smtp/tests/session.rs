//! The SMTP shell end to end against a real one-node `Mail` on a temporary
//! directory, with raw protocol bytes. A session's rules are tested over
//! `tokio::io::duplex` (`greeted`, `Server::duplex`); what needs the accept loop
//! or a socket (a delivery end to end, the connection limit, shutdown) over
//! loopback TCP (`greeted_over_tcp`). Every refused input checks its reply code
//! and that no mailbox changed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cm_repl::Mail;
use cm_smtp::{SmtpConfig, SmtpLimits};
use cm_types::Address;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@localhost";
const PASSWORD: &str = "correct horse";
const READ_TIMEOUT: Duration = Duration::from_secs(30);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Reply {
    code: u16,
    lines: Vec<String>,
}

/// A line-level SMTP client that reads replies whole (all continuation lines).
struct Client {
    stream: Box<dyn Io>,
    buffer: Vec<u8>,
    /// How long a read may wait before the test fails instead of hanging.
    read_timeout: Duration,
}

impl Client {
    fn new(stream: impl Io + 'static) -> Client {
        Client {
            stream: Box::new(stream),
            buffer: Vec::new(),
            read_timeout: READ_TIMEOUT,
        }
    }

    /// A client over `stream` and the server's greeting.
    async fn greeted_by(stream: impl Io + 'static) -> (Client, Reply) {
        let mut client = Client::new(stream);
        let greeting = client.reply().await;
        (client, greeting)
    }

    async fn connect(addr: SocketAddr) -> (Client, Reply) {
        Client::greeted_by(TcpStream::connect(addr).await.unwrap()).await
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// One line without its CRLF, or `None` at EOF.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end_idx) = self.buffer.windows(2).position(|pair| pair == b"\r\n") {
                let line = String::from_utf8(self.buffer[..end_idx].to_vec()).unwrap();
                self.buffer.drain(..end_idx + 2);
                return Some(line);
            }
            let mut chunk = [0u8; 4096];
            let n_read = tokio::time::timeout(self.read_timeout, self.stream.read(&mut chunk))
                .await
                .expect("server answers in time")
                .unwrap_or(0);
            if n_read == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n_read]);
        }
    }

    async fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await.expect("a reply, not EOF");
            let code = line[..3].parse().unwrap();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if last {
                return Reply { code, lines };
            }
        }
    }

    async fn command(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn expect(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.command(line).await;
        assert_eq!(reply.code, code, "{line:?} -> {:?}", reply.lines);
        reply
    }

    /// Starts a transaction from x@y.net to `recipient`, both accepted.
    async fn mail_to(&mut self, recipient: &str) {
        self.expect("MAIL FROM:<x@y.net>", 250).await;
        self.expect(&format!("RCPT TO:<{recipient}>"), 250).await;
    }

    async fn is_closed(&mut self) -> bool {
        self.line().await.is_none()
    }
}

struct Server {
    addr: SocketAddr,
    config: SmtpConfig,
    mail: Mail,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(config: SmtpConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::open_for_tests(dir.path());
    for address in [ALICE, BOB] {
        mail.create_account(&Address::parse(address).unwrap(), PASSWORD)
            .await
            .unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(cm_smtp::serve(
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
        _dir: dir,
    }
}

fn fast_config() -> SmtpConfig {
    SmtpConfig {
        auth_failure_delay: Duration::from_millis(20),
        ..SmtpConfig::default()
    }
}

/// A server that offers STARTTLS with a self-signed certificate kept in the
/// returned directory.
async fn start_with_tls() -> (Server, tempfile::TempDir) {
    let tls_dir = tempfile::tempdir().unwrap();
    let tls = cm_tls::server_config(tls_dir.path(), None, None, "localhost").unwrap();
    let server = start(SmtpConfig {
        tls: Some(tls),
        ..fast_config()
    })
    .await;
    (server, tls_dir)
}

async fn start_with_limits(limits: SmtpLimits) -> Server {
    start(SmtpConfig {
        limits,
        ..fast_config()
    })
    .await
}

impl Server {
    /// A session over an in-memory stream, as if from 127.0.0.1, and its greeting.
    async fn duplex(&self) -> (Client, Reply) {
        self.duplex_from(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// A session over an in-memory stream, as if from `peer`, and its greeting.
    async fn duplex_from(&self, peer: IpAddr) -> (Client, Reply) {
        let (client_side, server_side) = tokio::io::duplex(64 * 1024);
        let (config, mail, shutdown) = (
            self.config.clone(),
            self.mail.clone(),
            self.shutdown.clone(),
        );
        tokio::spawn(async move {
            let _ =
                cm_smtp::handle_connection(server_side, peer, "duplex", &config, &mail, &shutdown)
                    .await;
        });
        Client::greeted_by(client_side).await
    }

    /// Every message in `address`'s maildrop, oldest first.
    async fn stored(&self, address: &str) -> Vec<Vec<u8>> {
        let lock = self
            .mail
            .lock_maildrop(&Address::parse(address).unwrap())
            .await
            .unwrap();
        let mut messages = Vec::new();
        for info in self.mail.list(&lock).await.unwrap() {
            messages.push(
                self.mail
                    .retrieve(&lock, info.id)
                    .await
                    .unwrap()
                    .unwrap()
                    .to_vec(),
            );
        }
        messages
    }

    async fn assert_nothing_stored(&self) {
        for address in [ALICE, BOB] {
            assert!(
                self.stored(address).await.is_empty(),
                "{address} received mail"
            );
        }
    }
}

/// Splits a stored message into (trace headers we added, what the client sent).
fn split_trace(stored: &[u8], sent: &[u8]) -> String {
    assert!(
        stored.ends_with(sent),
        "the client's bytes are stored unchanged at the end"
    );
    String::from_utf8(stored[..stored.len() - sent.len()].to_vec()).unwrap()
}

/// A session over an in-memory stream, past EHLO.
async fn greeted(server: &Server) -> Client {
    let (client, greeting) = server.duplex().await;
    after_ehlo(client, greeting).await
}

/// A session over loopback TCP through the accept loop, past EHLO.
async fn greeted_over_tcp(server: &Server) -> Client {
    let (client, greeting) = Client::connect(server.addr).await;
    after_ehlo(client, greeting).await
}

async fn after_ehlo(mut client: Client, greeting: Reply) -> Client {
    assert_eq!(greeting.code, 220);
    client.expect("EHLO client.test", 250).await;
    client
}

/// Goal: a message with several recipients is stored once per recipient, byte for
/// byte after dot-unstuffing, behind Return-Path, Received and Message-ID.
#[tokio::test]
async fn delivers_to_several_recipients_byte_for_byte() {
    let server = start(fast_config()).await;
    let mut client = greeted_over_tcp(&server).await;
    client
        .expect("MAIL FROM:<Sender@Elsewhere.net> BODY=8BITMIME", 250)
        .await;
    client.expect(&format!("RCPT TO:<{ALICE}>"), 250).await;
    client.expect(&format!("RCPT TO:<{BOB}>"), 250).await;
    client.expect("DATA", 354).await;
    let body = "Subject: dots\r\n\r\n.leading dot\r\n..two\r\nünïcödé 8-bit\r\n".as_bytes();
    client.send(&cm_smtp_proto::data::dot_stuff(body)).await;
    let reply = client.reply().await;
    assert_eq!(reply.code, 250, "{:?}", reply.lines);
    client.expect("QUIT", 221).await;

    for address in [ALICE, BOB] {
        let stored = server.stored(address).await;
        assert_eq!(stored.len(), 1);
        let trace = split_trace(&stored[0], body);
        assert!(trace.starts_with(
            "Return-Path: <Sender@Elsewhere.net>\r\nReceived: from client.test ([127.0.0.1])\r\n"
        ));
        assert!(trace.contains("\tby localhost with ESMTP id "), "{trace}");
        assert!(
            !trace.contains("\tfor <"),
            "several recipients are not named: {trace}"
        );
        assert!(
            trace.contains("Message-ID: <"),
            "a missing Message-ID is added: {trace}"
        );
    }
}

/// Goal: the trace headers the session core adds name the peer, the session id
/// the shell passed in, the single recipient, that nobody logged in
/// (Authentication-Results, RFC 8601) and a Message-ID on our hostname, and the
/// client's bytes follow them unchanged. Method: one delivery over an in-memory
/// stream.
#[tokio::test]
async fn trace_headers_over_duplex() {
    let server = start(fast_config()).await;
    let mut client = greeted(&server).await;
    client.expect("MAIL FROM:<>", 250).await;
    client.expect(&format!("RCPT TO:<{BOB}>"), 250).await;
    client.expect("DATA", 354).await;
    let body = b"Subject: bounce\r\n\r\n..\r\n";
    client.send(&cm_smtp_proto::data::dot_stuff(body)).await;
    assert_eq!(client.reply().await.code, 250);
    let stored = server.stored(BOB).await;
    assert_eq!(stored.len(), 1);
    let trace = split_trace(&stored[0], body);
    let lines: Vec<&str> = trace.split("\r\n").collect();
    assert_eq!(
        lines[..4],
        [
            "Return-Path: <>",
            "Received: from client.test ([127.0.0.1])",
            "\tby localhost with ESMTP id duplex",
            &format!("\tfor <{BOB}>;"),
        ]
    );
    assert!(
        lines[4].starts_with('\t') && lines[4].ends_with(" +0000"),
        "{trace}"
    );
    assert_eq!(lines[5], "Authentication-Results: localhost; auth=none");
    assert!(
        lines[6].starts_with("Message-ID: <") && lines[6].ends_with("@localhost>"),
        "{trace}"
    );
    assert_eq!(lines.len(), 8, "nothing else is added: {trace}");
}

/// Goal: PIPELINING (RFC 2920) — a whole transaction sent in one write gets its
/// replies in order, and a Message-ID the client set is kept.
#[tokio::test]
async fn pipelined_transaction() {
    let server = start(fast_config()).await;
    let (mut client, _) = Client::connect(server.addr).await;
    client.send(format!("EHLO p\r\nMAIL FROM:<x@y.net>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n").as_bytes()).await;
    let ehlo = client.reply().await;
    assert!(ehlo.lines.iter().any(|line| line == "PIPELINING"));
    assert!(ehlo.lines.iter().any(|line| line == "SIZE 26214400"));
    let codes: Vec<u16> = [
        client.reply().await,
        client.reply().await,
        client.reply().await,
        client.reply().await,
    ]
    .iter()
    .map(|reply| reply.code)
    .collect();
    assert_eq!(codes, [250, 250, 550, 354]);
    let body = b"Message-ID: <mine@client>\r\n\r\nhi\r\n";
    client
        .send(
            &[
                cm_smtp_proto::data::dot_stuff(body),
                b"NOOP\r\nQUIT\r\n".to_vec(),
            ]
            .concat(),
        )
        .await;
    assert_eq!(client.reply().await.code, 250);
    assert_eq!(client.reply().await.code, 250);
    assert_eq!(client.reply().await.code, 221);
    let stored = server.stored(ALICE).await;
    let trace = split_trace(&stored[0], body);
    assert!(
        !trace.contains("Message-ID"),
        "the client's Message-ID is kept: {trace}"
    );
    assert!(trace.contains(&format!("\tfor <{ALICE}>")));
}

/// Goal: each refused input gets the RFC's code, changes no mailbox, and the
/// session survives where the RFC says it does. Method: a table of scripts.
#[tokio::test]
async fn refused_inputs_store_nothing() {
    let limits = SmtpLimits {
        message_bytes_max: 1000,
        recipients_max: 2,
        ..SmtpLimits::default()
    };
    let server = start_with_limits(limits).await;
    let long_line = format!("NOOP {}", "x".repeat(600));
    let scripts: Vec<(&str, Vec<(String, u16)>)> = vec![
        (
            "unknown user",
            vec![
                ("MAIL FROM:<x@y.net>".into(), 250),
                ("RCPT TO:<nobody@example.org>".into(), 550),
                ("DATA".into(), 554),
            ],
        ),
        (
            "relay",
            vec![
                ("MAIL FROM:<x@y.net>".into(), 250),
                ("RCPT TO:<victim@elsewhere.net>".into(), 550),
                ("DATA".into(), 554),
            ],
        ),
        (
            "command line too long",
            vec![(long_line, 500), ("NOOP".into(), 250)],
        ),
        (
            "declared size",
            vec![
                ("MAIL FROM:<x@y.net> SIZE=1001".into(), 552),
                ("RCPT TO:<alice@example.org>".into(), 503),
            ],
        ),
        (
            "no MAIL",
            vec![
                ("RCPT TO:<alice@example.org>".into(), 503),
                ("DATA".into(), 503),
            ],
        ),
        (
            "bad address",
            vec![
                ("MAIL FROM:<x@y.net>".into(), 250),
                ("RCPT TO:<a b@example.org>".into(), 553),
            ],
        ),
        (
            "unoffered parameter",
            vec![("MAIL FROM:<x@y.net> RET=HDRS".into(), 555)],
        ),
        (
            "unknown command",
            vec![("EXPLODE".into(), 500), ("EXPN list".into(), 502)],
        ),
        (
            "utf-8 without SMTPUTF8",
            vec![("MAIL FROM:<jürgen@example.org>".into(), 553)],
        ),
    ];
    for (name, script) in scripts {
        let mut client = greeted(&server).await;
        for (line, code) in script {
            let reply = client.command(&line).await;
            assert_eq!(reply.code, code, "{name}: {line:?} -> {:?}", reply.lines);
        }
        client.expect("QUIT", 221).await;
    }
    server.assert_nothing_stored().await;
}

/// Goal: a body over the size limit or with an over-long line is drained to its
/// dot, refused (552 / 500), not stored, and the session goes on.
#[tokio::test]
async fn oversized_bodies_are_drained_and_refused() {
    let limits = SmtpLimits {
        message_bytes_max: 1000,
        ..SmtpLimits::default()
    };
    let server = start_with_limits(limits).await;
    let mut client = greeted(&server).await;
    let too_big = "0123456789\r\n".repeat(200);
    let long_line = format!("{}\r\n", "y".repeat(1200));
    for (body, code) in [(too_big, 552), (long_line, 500)] {
        client.mail_to(ALICE).await;
        client.expect("DATA", 354).await;
        client
            .send(&cm_smtp_proto::data::dot_stuff(body.as_bytes()))
            .await;
        assert_eq!(client.reply().await.code, code);
        client.expect("RCPT TO:<alice@example.org>", 503).await;
    }
    client.expect("NOOP", 250).await;
    server.assert_nothing_stored().await;
}

/// Goal: RCPT beyond the recipient limit is 452 4.5.3 and the message goes to
/// the accepted recipients only.
#[tokio::test]
async fn too_many_recipients() {
    let limits = SmtpLimits {
        recipients_max: 1,
        ..SmtpLimits::default()
    };
    let server = start_with_limits(limits).await;
    let mut client = greeted(&server).await;
    client.mail_to(ALICE).await;
    let reply = client.expect(&format!("RCPT TO:<{BOB}>"), 452).await;
    assert!(reply.lines[0].starts_with("4.5.3"));
    assert!(server.stored(ALICE).await.is_empty());
    client.expect("DATA", 354).await;
    client.send(b"hi\r\n.\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    assert_eq!(server.stored(ALICE).await.len(), 1);
    assert!(server.stored(BOB).await.is_empty());
}

/// Goal: RSET in the middle of a transaction forgets sender and recipients.
#[tokio::test]
async fn rset_mid_transaction() {
    let server = start(fast_config()).await;
    let mut client = greeted(&server).await;
    client.mail_to(ALICE).await;
    client.expect("RSET", 250).await;
    client.expect("DATA", 503).await;
    client.mail_to(BOB).await;
    client.expect("DATA", 354).await;
    client.send(b"x\r\n.\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    assert!(server.stored(ALICE).await.is_empty());
    assert_eq!(server.stored(BOB).await.len(), 1);
}

/// Goal: ten bad commands in a row end the session with 421.
#[tokio::test]
async fn too_many_bad_commands_close() {
    let server = start(fast_config()).await;
    let mut client = greeted(&server).await;
    for _ in 1..10 {
        client.expect("GARBAGE", 500).await;
    }
    client.expect("GARBAGE", 421).await;
    assert!(client.is_closed().await);
}

/// Goal: random bytes never crash the server; the next connection is served.
#[tokio::test]
async fn garbage_bytes() {
    let server = start(fast_config()).await;
    let (mut client, _) = Client::connect(server.addr).await;
    let mut garbage = Vec::new();
    let mut state: u32 = 12345;
    for _ in 0..20_000 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        garbage.push((state >> 16) as u8);
    }
    client.send(&garbage).await;
    client.send(b"\r\n").await;
    drop(client);
    let mut client = greeted_over_tcp(&server).await;
    client.expect("QUIT", 221).await;
    server.assert_nothing_stored().await;
}

/// Goal: wrong credentials get 535 5.7.8 after a delay that grows; right ones 235.
#[tokio::test]
async fn auth_failures_are_slowed_down() {
    let server = start(SmtpConfig {
        auth_failure_delay: Duration::from_millis(100),
        ..SmtpConfig::default()
    })
    .await;
    let mut client = greeted(&server).await;
    let wrong = BASE64.encode(format!("\0{ALICE}\0wrong"));
    let started = std::time::Instant::now();
    let reply = client.expect(&format!("AUTH PLAIN {wrong}"), 535).await;
    assert!(reply.lines[0].starts_with("5.7.8"));
    client.expect(&format!("AUTH PLAIN {wrong}"), 535).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "100 ms then 200 ms"
    );
    client.expect("AUTH LOGIN", 334).await;
    client.expect(&BASE64.encode(ALICE), 334).await;
    client.expect(&BASE64.encode(PASSWORD), 235).await;
}

async fn tls_client(server: &Server, tls_dir: &std::path::Path) -> Client {
    tls_client_from(server, tls_dir, IpAddr::V4(Ipv4Addr::LOCALHOST)).await
}

async fn tls_client_from(server: &Server, tls_dir: &std::path::Path, peer: IpAddr) -> Client {
    let (client, greeting) = server.duplex_from(peer).await;
    let mut client = after_ehlo(client, greeting).await;
    client.expect("STARTTLS", 220).await;
    assert!(client.buffer.is_empty());
    let tls = cm_serve::testing::connect_tls(tls_dir, client.stream).await;
    Client::new(tls)
}

/// Goal: STARTTLS (RFC 3207) resets the session, AUTH works inside TLS, the trace
/// header says ESMTPSA (RFC 3848), and an authenticated session may send to another
/// domain: that copy goes to the outbound queue (unauthenticated, it is refused:
/// `refused_inputs_store_nothing`).
#[tokio::test]
async fn starttls_then_auth_plain() {
    let (server, tls_dir) = start_with_tls().await;
    let mut client = tls_client(&server, tls_dir.path()).await;
    client.expect("MAIL FROM:<x@y.net>", 503).await;
    let ehlo = client.expect("EHLO tls.test", 250).await;
    assert!(
        !ehlo.lines.iter().any(|line| line == "STARTTLS"),
        "not offered twice"
    );
    client
        .expect(
            &format!(
                "AUTH PLAIN {}",
                BASE64.encode(format!("\0{BOB}\0{PASSWORD}"))
            ),
            235,
        )
        .await;
    client.expect(&format!("MAIL FROM:<{BOB}>"), 250).await;
    client.expect("RCPT TO:<friend@elsewhere.net>", 250).await;
    client.expect(&format!("RCPT TO:<{ALICE}>"), 250).await;
    client.expect("DATA", 354).await;
    client.send(b"Subject: secure\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    let stored = server.stored(ALICE).await;
    let trace = split_trace(&stored[0], b"Subject: secure\r\n\r\nhello\r\n");
    assert!(trace.contains("with ESMTPSA"), "{trace}");
    assert!(
        trace.contains(
            "Authentication-Results: localhost;\r\n\tauth=pass smtp.auth=bob@localhost\r\n"
        ),
        "{trace}"
    );

    // The copy for the other domain is queued (docs/DESIGN.md §12), with the same
    // octets as the local one, from the authenticated sender.
    let queued = server.mail.outbound_held(10).await.unwrap();
    assert_eq!(queued.len(), 1, "the authenticated relay queued nothing");
    assert_eq!(queued[0].recipients, vec!["friend@elsewhere.net"]);
    assert_eq!(queued[0].sender, BOB);
    let due = server.mail.outbound_due(u64::MAX, 10).await.unwrap().due;
    assert_eq!(
        due[0].1, stored[0],
        "the queued octets differ from the stored ones"
    );
}

/// A documentation address (RFC 5737): a peer that is not on loopback.
const REMOTE_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

/// Goal: from a peer that is not on loopback, AUTH is not advertised before
/// STARTTLS and is refused with 538 5.7.11 (RFC 4954 §6) without authenticating,
/// whatever the credentials; after STARTTLS the same client logs in. A loopback
/// peer may still log in without TLS (`auth_failures_are_slowed_down`).
#[tokio::test]
async fn auth_off_loopback_needs_starttls() {
    let (server, tls_dir) = start_with_tls().await;
    let (mut client, greeting) = server.duplex_from(REMOTE_PEER).await;
    assert_eq!(greeting.code, 220);
    let ehlo = client.expect("EHLO far.test", 250).await;
    assert!(
        !ehlo.lines.iter().any(|line| line.starts_with("AUTH")),
        "{:?}",
        ehlo.lines
    );
    assert!(ehlo.lines.iter().any(|line| line == "STARTTLS"));
    let plain = BASE64.encode(format!("\0{BOB}\0{PASSWORD}"));
    let reply = client.expect(&format!("AUTH PLAIN {plain}"), 538).await;
    assert_eq!(
        reply.lines,
        ["5.7.11 Encryption required for requested authentication mechanism"]
    );
    client.expect("AUTH LOGIN", 538).await;
    // Not authenticated: relaying is still refused.
    client.expect("MAIL FROM:<x@y.net>", 250).await;
    client.expect("RCPT TO:<friend@elsewhere.net>", 550).await;
    client.expect("QUIT", 221).await;

    let mut client = tls_client_from(&server, tls_dir.path(), REMOTE_PEER).await;
    let ehlo = client.expect("EHLO far.test", 250).await;
    assert!(ehlo.lines.iter().any(|line| line == "AUTH PLAIN LOGIN"));
    client.expect(&format!("AUTH PLAIN {plain}"), 235).await;
}

/// Goal: a MAIL FROM address in a served domain is accepted only from a session
/// logged in as that address, with the reply text saying why (and, without a
/// login, to log in); nothing is stored from a refused transaction; `<>` and
/// other domains need no login; `sender_login_match = false` relaxes the rule.
#[tokio::test]
async fn senders_in_served_domains_need_their_login() {
    let server = start(fast_config()).await;
    let mut client = greeted(&server).await;
    let reply = client.expect(&format!("MAIL FROM:<{ALICE}>"), 553).await;
    assert_eq!(
        reply.lines,
        [
            "5.7.1 Sender address rejected: not owned by the authenticated user; \
          authenticate (AUTH) to send as this address"
        ]
    );
    client.expect(&format!("RCPT TO:<{BOB}>"), 503).await;
    client.expect("DATA", 503).await;
    client.expect("MAIL FROM:<>", 250).await;
    client.expect("RSET", 250).await;
    client.expect("MAIL FROM:<x@y.net>", 250).await;
    client.expect("RSET", 250).await;
    let plain = BASE64.encode(format!("\0{BOB}\0{PASSWORD}"));
    client.expect(&format!("AUTH PLAIN {plain}"), 235).await;
    let reply = client.expect(&format!("MAIL FROM:<{ALICE}>"), 553).await;
    assert_eq!(
        reply.lines,
        ["5.7.1 Sender address rejected: not owned by the authenticated user"]
    );
    client.expect(&format!("RCPT TO:<{ALICE}>"), 503).await;
    server.assert_nothing_stored().await;
    client.expect("MAIL FROM:<Bob@LOCALHOST>", 250).await;
    client.expect(&format!("RCPT TO:<{ALICE}>"), 250).await;
    client.expect("DATA", 354).await;
    client.send(b"Subject: mine\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    assert_eq!(server.stored(ALICE).await.len(), 1);

    let relaxed = start(SmtpConfig {
        sender_login_match: false,
        ..fast_config()
    })
    .await;
    let mut client = greeted(&relaxed).await;
    client.expect(&format!("MAIL FROM:<{ALICE}>"), 250).await;
    client.expect(&format!("RCPT TO:<{BOB}>"), 250).await;
}

/// Goal: an Authentication-Results field a client forged in this node's name
/// (RFC 8601 §5) is removed, whatever its case and folding, while one of another
/// host and the rest of the message are kept byte for byte behind our own field.
#[tokio::test]
async fn forged_authentication_results_are_removed() {
    let server = start(fast_config()).await;
    let mut client = greeted(&server).await;
    client.mail_to(ALICE).await;
    client.expect("DATA", 354).await;
    let kept = "Authentication-Results: mx.elsewhere.net; auth=pass smtp.auth=x@y.net\r\n\
                Subject: claims\r\n\r\nAuthentication-Results: localhost; in the body\r\n";
    let sent = format!(
        "authentication-results: (trust me) LocalHost;\r\n\tauth=pass smtp.auth={ALICE}\r\n{kept}"
    );
    client
        .send(&cm_smtp_proto::data::dot_stuff(sent.as_bytes()))
        .await;
    assert_eq!(client.reply().await.code, 250);
    let stored = server.stored(ALICE).await;
    let trace = split_trace(&stored[0], kept.as_bytes());
    let lines: Vec<&str> = trace.split("\r\n").collect();
    assert_eq!(lines[5], "Authentication-Results: localhost; auth=none");
    assert!(lines[6].starts_with("Message-ID: <"), "{trace}");
    assert_eq!(lines.len(), 8, "the forged field is gone: {trace}");
}

/// Goal: commands pipelined behind STARTTLS in clear text are dropped (RFC 3207 §4.2).
#[tokio::test]
async fn plaintext_after_starttls_is_dropped() {
    let (server, _tls_dir) = start_with_tls().await;
    let mut client = greeted(&server).await;
    client.send(b"STARTTLS\r\nMAIL FROM:<x@y.net>\r\n").await;
    assert_eq!(client.reply().await.code, 220);
    // Whatever the server now reads is a TLS handshake; the injected MAIL must
    // not have been answered in clear text.
    let mut rest = [0u8; 64];
    let n_read =
        tokio::time::timeout(Duration::from_millis(300), client.stream.read(&mut rest)).await;
    assert!(
        n_read.is_err() || matches!(n_read, Ok(Ok(0))),
        "no clear-text reply after 220"
    );
}

/// Goal: past the connection limit a client gets 421 4.3.2 and is closed.
#[tokio::test]
async fn connection_limit() {
    let limits = SmtpLimits {
        connections_max: 1,
        ..SmtpLimits::default()
    };
    let server = start_with_limits(limits).await;
    let (_first, greeting) = Client::connect(server.addr).await;
    assert_eq!(greeting.code, 220);
    let (mut second, refusal) = Client::connect(server.addr).await;
    assert_eq!(refusal.code, 421);
    assert!(refusal.lines[0].starts_with("4.3.2"));
    assert!(second.is_closed().await);
}

/// Goal: one client address past its connection budget gets 421 4.7.0 and is
/// closed, while another address is still greeted. Method: budget 2 with loopback
/// not trusted, clients 127.0.0.2 and 127.0.0.3 over TCP.
#[tokio::test]
async fn client_connection_budget() {
    let server = start(SmtpConfig {
        client_budget: cm_serve::ClientBudget {
            connections_per_client_max: 2,
            trusted_networks: Vec::new(),
        },
        ..fast_config()
    })
    .await;
    async fn connect_from(from: [u8; 4], addr: SocketAddr) -> (Client, Reply) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        Client::greeted_by(socket.connect(addr).await.unwrap()).await
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let (client, greeting) = connect_from([127, 0, 0, 2], server.addr).await;
        assert_eq!(greeting.code, 220);
        held.push(client);
    }
    let (mut over, refusal) = connect_from([127, 0, 0, 2], server.addr).await;
    assert_eq!(refusal.code, 421);
    assert!(refusal.lines[0].starts_with("4.7.0"), "{:?}", refusal.lines);
    assert!(over.is_closed().await);
    let (mut other, greeting) = connect_from([127, 0, 0, 3], server.addr).await;
    assert_eq!(greeting.code, 220);
    other.expect("EHLO other.test", 250).await;
}

/// Goal: shutdown says 421 to open sessions and `serve` returns once they closed.
#[tokio::test]
async fn shutdown_closes_sessions() {
    let server = start(fast_config()).await;
    let mut client = greeted_over_tcp(&server).await;
    server.shutdown.cancel();
    assert_eq!(client.reply().await.code, 421);
    assert!(client.is_closed().await);
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .unwrap()
        .unwrap();
}

/// Goal: an idle client gets 421 4.4.2 after the idle timeout. Method: a duplex
/// stream and paused time, so the five minutes pass instantly.
#[tokio::test(start_paused = true)]
async fn idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::open_for_tests(dir.path());
    let (client_side, server_side) = tokio::io::duplex(4096);
    let config = SmtpConfig::default();
    let shutdown = CancellationToken::new();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let session = tokio::spawn(async move {
        cm_smtp::handle_connection(server_side, ip, "t", &config, &mail, &shutdown)
            .await
            .unwrap();
    });
    let mut client = Client {
        stream: Box::new(client_side),
        buffer: Vec::new(),
        read_timeout: Duration::from_secs(3600),
    };
    assert_eq!(client.reply().await.code, 220);
    let started = tokio::time::Instant::now();
    let reply = client.reply().await;
    assert_eq!(reply.code, 421);
    assert!(reply.lines[0].starts_with("4.4.2"));
    assert!(started.elapsed() >= cm_types::limits::SMTP_IDLE_TIMEOUT);
    assert!(client.is_closed().await);
    session.await.unwrap();
}
