//! The IMAP shell against a real one-node mail service, over `tokio::io::duplex`
//! (no sockets) except where the accept loop itself is the subject. Each test
//! names its goal and method; waits poll against a deadline.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use cm_imap::{ImapConfig, ImapLimits, ImapServerError, handle_connection};
use cm_repl::Mail;
use cm_types::Address;
use tokio::io::DuplexStream;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio_util::sync::CancellationToken;

const ALICE: &str = "alice@example.org";
const PASSWORD: &str = "correct horse";
const MESSAGE: &[u8] = b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: hello\r\n\r\nfirst line\r\n.dot line\r\n";

struct Server {
    config: ImapConfig,
    mail: Mail,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mail = Mail::open_for_tests(dir.path());
        mail.create_account(&alice(), PASSWORD).await.unwrap();
        Server {
            config: ImapConfig {
                auth_failure_delay: Duration::from_millis(10),
                ..ImapConfig::default()
            },
            mail,
            shutdown: CancellationToken::new(),
            _dir: dir,
        }
    }

    async fn deliver(&self, message: &[u8]) {
        // Message ids begin with the arrival millisecond: let it move on, so that
        // UIDs follow delivery order.
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.mail
            .deliver(&[alice()], bytes::Bytes::copy_from_slice(message))
            .await
            .unwrap();
    }

    /// A session from `peer`, past the greeting.
    async fn connect_from(
        &self,
        peer: IpAddr,
    ) -> (Client, tokio::task::JoinHandle<Result<(), ImapServerError>>) {
        let (client_side, server_side) = tokio::io::duplex(1024 * 1024);
        let (config, mail, shutdown) = (
            self.config.clone(),
            self.mail.clone(),
            self.shutdown.clone(),
        );
        let session = tokio::spawn(async move {
            handle_connection(server_side, peer, &config, &mail, &shutdown).await
        });
        let mut client = Client {
            stream: BufReader::new(client_side),
            n_tags: 0,
        };
        let greeting = client.line().await;
        assert!(greeting.starts_with("* OK [CAPABILITY "), "{greeting}");
        assert!(greeting.contains("IDLE"), "{greeting}");
        (client, session)
    }

    async fn logged_in(&self) -> Client {
        let (mut client, _session) = self.connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
        let reply = client
            .command(&format!("LOGIN {ALICE} \"{PASSWORD}\""))
            .await;
        assert!(reply.last().unwrap().contains("OK"), "{reply:?}");
        client
    }
}

fn alice() -> Address {
    Address::parse(ALICE).unwrap()
}

struct Client<S = DuplexStream> {
    stream: BufReader<S>,
    n_tags: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// One line without its CRLF; a literal announced at its end is read whole and
    /// appended (so a FETCH line comes back as one string).
    async fn line(&mut self) -> String {
        let mut line = Vec::new();
        let n_read = self.stream.read_until(b'\n', &mut line).await.unwrap();
        assert!(n_read > 0, "connection closed");
        let mut text = String::from_utf8(line).unwrap();
        assert!(text.ends_with("\r\n"), "{text:?}");
        text.truncate(text.len() - 2);
        if let Some(open) = text.rfind('{')
            && text.ends_with('}')
            && let Ok(n_bytes) = text[open + 1..text.len() - 1].parse::<usize>()
        {
            let mut literal = vec![0u8; n_bytes];
            self.stream.read_exact(&mut literal).await.unwrap();
            text.push_str("\r\n");
            text.push_str(&String::from_utf8(literal).unwrap());
            text.push_str(&self.line_raw().await);
        }
        text
    }

    async fn line_raw(&mut self) -> String {
        Box::pin(self.line()).await
    }

    /// Sends a tagged command and returns every line up to its tagged reply.
    async fn command(&mut self, command: &str) -> Vec<String> {
        self.n_tags += 1;
        let tag = format!("a{}", self.n_tags);
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until_tagged(&tag).await
    }

    async fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
}

fn ok(lines: &[String]) -> bool {
    lines
        .last()
        .is_some_and(|line| line.split(' ').nth(1) == Some("OK"))
}

/// Goal: a whole session works on the replicated data: SELECT shows delivered
/// mail with UIDs, FETCH BODY[] is byte-exact, STORE sets flags, CREATE, APPEND,
/// LIST, UID MOVE and EXPUNGE work, and an EXPUNGE in INBOX is POP3's deletion.
/// Method: one scripted session over a duplex stream, checked line by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_on_the_replicated_mailbox() {
    let server = Server::start().await;
    server.deliver(MESSAGE).await;
    server.deliver(b"Subject: second\r\n\r\nsecond\r\n").await;
    let mut client = server.logged_in().await;

    let select = client.command("SELECT INBOX").await;
    assert!(ok(&select), "{select:?}");
    assert!(select.contains(&"* 2 EXISTS".to_owned()), "{select:?}");
    assert!(
        select.iter().any(|line| line.contains("[UIDNEXT 3]")),
        "{select:?}"
    );
    assert!(
        select.iter().any(|line| line.contains("[UIDVALIDITY 1]")),
        "{select:?}"
    );

    let fetch = client.command("UID FETCH 1 (UID FLAGS BODY.PEEK[])").await;
    assert!(ok(&fetch), "{fetch:?}");
    let expected = format!(
        "* 1 FETCH (UID 1 FLAGS () BODY[] {{{}}}\r\n{})",
        MESSAGE.len(),
        String::from_utf8_lossy(MESSAGE)
    );
    assert_eq!(fetch[0], expected);

    let store = client.command("STORE 1 +FLAGS (\\Seen)").await;
    assert!(ok(&store), "{store:?}");
    assert!(store[0].contains("\\Seen"), "{store:?}");
    let state = server
        .mail
        .numbered_folder(&alice(), cm_model::FolderId::INBOX)
        .await
        .unwrap();
    assert_eq!(state.counts().n_unseen, 1, "the flag is stored");

    assert!(ok(&client.command("CREATE Work").await));
    let appended = b"Subject: appended\r\n\r\nhi\r\n";
    client
        .send(format!("a100 APPEND Work (\\Flagged) {{{}}}\r\n", appended.len()).as_bytes())
        .await;
    let go_ahead = client.line().await;
    assert!(go_ahead.starts_with('+'), "{go_ahead}");
    client.send(appended).await;
    client.send(b"\r\n").await;
    let append = client.until_tagged("a100").await;
    assert!(ok(&append), "{append:?}");
    assert!(append.last().unwrap().contains("APPENDUID"), "{append:?}");

    let list = client.command("LIST \"\" *").await;
    assert!(ok(&list), "{list:?}");
    for name in ["INBOX", "Work"] {
        assert!(
            list.iter()
                .any(|line| line.ends_with(name) || line.ends_with(&format!("\"{name}\""))),
            "{name}: {list:?}"
        );
    }
    let status = client
        .command("STATUS Work (MESSAGES UIDNEXT UNSEEN)")
        .await;
    assert!(ok(&status), "{status:?}");
    assert!(
        status[0].contains("MESSAGES 1") && status[0].contains("UIDNEXT 2"),
        "{status:?}"
    );

    let moved = client.command("UID MOVE 2 Work").await;
    assert!(ok(&moved), "{moved:?}");
    assert!(
        moved.iter().any(|line| line.contains("COPYUID")),
        "{moved:?}"
    );
    assert!(moved.contains(&"* 2 EXPUNGE".to_owned()), "{moved:?}");

    assert!(ok(&client.command("STORE 1 +FLAGS (\\Deleted)").await));
    let expunge = client.command("EXPUNGE").await;
    assert!(expunge.contains(&"* 1 EXPUNGE".to_owned()), "{expunge:?}");
    let lock = server.mail.lock_maildrop(&alice()).await.unwrap();
    assert!(
        server.mail.list(&lock).await.unwrap().is_empty(),
        "POP3 still lists it"
    );
    drop(lock);

    let work = client.command("SELECT Work").await;
    assert!(work.contains(&"* 2 EXISTS".to_owned()), "{work:?}");
    let logout = client.command("LOGOUT").await;
    assert!(logout[0].starts_with("* BYE"), "{logout:?}");
}

/// Goal: IDLE reports a delivery through the wake-up of this node's replica, well
/// before the fallback poll would. Method: the poll is set to its slowest (2 s);
/// a delivery during IDLE must show as `EXISTS` within 1.5 s; DONE ends IDLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_hears_of_a_delivery_at_once() {
    let mut server = Server::start().await;
    server.config.limits = ImapLimits {
        idle_poll_interval: Duration::from_secs(2),
        ..ImapLimits::default()
    };
    server.deliver(MESSAGE).await;
    let mut client = server.logged_in().await;
    assert!(ok(&client.command("SELECT INBOX").await));
    client.send(b"i1 IDLE\r\n").await;
    assert!(client.line().await.starts_with('+'));
    let started = Instant::now();
    server.deliver(b"Subject: pushed\r\n\r\nnow\r\n").await;
    let exists = client.line().await;
    assert_eq!(exists, "* 2 EXISTS");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}: the fallback poll, not the wake-up",
        started.elapsed()
    );
    client.send(b"DONE\r\n").await;
    let done = client.until_tagged("i1").await;
    assert!(ok(&done), "{done:?}");
}

/// Goal: passwords never cross a network in clear unless allowed. Method: a
/// session from a non-loopback peer without TLS is refused LOGIN; one from
/// loopback is not; a wrong password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_needs_tls_or_loopback_and_the_right_password() {
    let server = Server::start().await;
    let remote: IpAddr = "192.0.2.7".parse().unwrap();
    let (mut client, _session) = server.connect_from(remote).await;
    let refused = client
        .command(&format!("LOGIN {ALICE} \"{PASSWORD}\""))
        .await;
    assert!(!ok(&refused), "{refused:?}");
    assert!(!ok(&client.command("SELECT INBOX").await));

    let (mut client, _session) = server.connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    let wrong = client.command(&format!("LOGIN {ALICE} wrong")).await;
    assert!(wrong.last().unwrap().contains("NO"), "{wrong:?}");
    let right = client
        .command(&format!("LOGIN {ALICE} \"{PASSWORD}\""))
        .await;
    assert!(ok(&right), "{right:?}");
}

/// Goal: a session ends with BYE on shutdown and on the autologout timer. Method:
/// cancel the shutdown token under an idle session; a second session with a short
/// timeout must end by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_autologout_end_sessions() {
    let mut server = Server::start().await;
    let (mut client, session) = server.connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    server.shutdown.cancel();
    assert!(client.line().await.starts_with("* BYE"));
    session.await.unwrap().unwrap();

    server.shutdown = CancellationToken::new();
    server.config.limits = ImapLimits {
        idle_timeout: Duration::from_millis(200),
        ..ImapLimits::default()
    };
    let (mut client, session) = server.connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    assert!(
        client.line().await.starts_with("* BYE"),
        "no BYE at autologout"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the autologout did not fire");
    assert!(matches!(ended.unwrap(), Err(ImapServerError::IdleTimeout)));
}

/// Goal: STARTTLS upgrades the session and then allows LOGIN from a network peer.
/// Method: a non-loopback session on a server with a self-signed certificate
/// sends STARTTLS, runs the handshake over the duplex stream and logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_then_login_from_the_network() {
    let mut server = Server::start().await;
    let cert_dir = tempfile::tempdir().unwrap();
    server.config.tls =
        Some(cm_tls::server_config(cert_dir.path(), None, None, "localhost").unwrap());
    let (mut client, _session) = server.connect_from("192.0.2.7".parse().unwrap()).await;
    let capability = client.command("CAPABILITY").await;
    assert!(
        capability[0].contains("STARTTLS") && capability[0].contains("LOGINDISABLED"),
        "{capability:?}"
    );
    let starttls = client.command("STARTTLS").await;
    assert!(ok(&starttls), "{starttls:?}");
    let tls = cm_serve::testing::connect_tls(cert_dir.path(), client.stream.into_inner()).await;
    let mut client = Client {
        stream: BufReader::new(tls),
        n_tags: 10,
    };
    let login = client
        .command(&format!("LOGIN {ALICE} \"{PASSWORD}\""))
        .await;
    assert!(ok(&login), "{login:?}");
    assert!(ok(&client.command("SELECT INBOX").await));
}
