//! A small POP3 client (RFC 1939, RFC 2449 response codes, RFC 5034 AUTH PLAIN):
//! just the commands a poller needs.

use std::time::Duration;

use base64::Engine as _;
use tokio::io::BufStream;
use tokio::net::TcpStream;

use crate::io::{Overflow, connect, line_text, read_line, read_line_with, within, write_all_flush};
use crate::server::Server;
use crate::{Credentials, RpcError};

/// RFC 1939 caps a response line at 512 octets; message lines may be up to 1000
/// (RFC 5322) but some servers pass longer ones through, so allow some slack.
const LINE_BYTES_MAX: usize = 64 * 1024;
/// More messages than this in one listing means the mailbox is not an rpc mailbox.
pub(crate) const LISTING_ENTRIES_MAX: usize = 100_000;

pub(crate) struct Session {
    stream: BufStream<TcpStream>,
    peer: String,
    io_timeout: Duration,
}

/// One entry of a UIDL listing joined with its LIST size.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub number: u32,
    pub uidl: String,
    pub size: u64,
}

impl Session {
    /// Connects and logs in; `[IN-USE]` becomes [`RpcError::InUse`] so that pollers
    /// wait instead of failing over, `[AUTH]` becomes [`RpcError::Auth`].
    pub(crate) async fn open(
        server: &Server,
        credentials: &Credentials,
        io_timeout: Duration,
    ) -> Result<Session, RpcError> {
        let peer = server.pop3_addr();
        let mut session = Session {
            stream: connect(&peer, io_timeout).await?,
            peer,
            io_timeout,
        };
        let greeting = within(io_timeout, &session.peer.clone(), session.status()).await?;
        session.expect_ok(greeting, "greeting")?;
        let token = format!("\0{}\0{}", credentials.account, credentials.password);
        let command = format!(
            "AUTH PLAIN {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(token)
        );
        let answer = session.command(command.as_bytes()).await?;
        match answer {
            Ok(_) => Ok(session),
            Err(text) if text.starts_with("[IN-USE]") => Err(RpcError::InUse {
                peer: session.peer.clone(),
                account: credentials.account.clone(),
            }),
            Err(text) if text.starts_with("[SYS/TEMP]") => Err(RpcError::Protocol {
                peer: session.peer.clone(),
                detail: format!("login deferred: {text}"),
            }),
            Err(text) => Err(RpcError::Auth {
                peer: session.peer.clone(),
                account: credentials.account.clone(),
                text,
            }),
        }
    }

    /// Reads one status line: `Ok(text)` for +OK, `Err(text)` for -ERR.
    async fn status(&mut self) -> Result<Result<String, String>, RpcError> {
        let mut line = Vec::new();
        read_line(&mut self.stream, &mut line, LINE_BYTES_MAX, &self.peer).await?;
        let text = line_text(&line);
        if let Some(rest) = text.strip_prefix("+OK") {
            Ok(Ok(rest.trim().to_owned()))
        } else if let Some(rest) = text.strip_prefix("-ERR") {
            Ok(Err(rest.trim().to_owned()))
        } else {
            Err(self.protocol(format!("malformed status line {text:?}")))
        }
    }

    /// Sends a command (never logged: AUTH carries the password) and reads its status.
    async fn command(&mut self, command: &[u8]) -> Result<Result<String, String>, RpcError> {
        let peer = self.peer.clone();
        within(self.io_timeout, &peer, async {
            write_all_flush(&mut self.stream, command, &peer).await?;
            self.status().await
        })
        .await
    }

    fn expect_ok(&self, answer: Result<String, String>, stage: &str) -> Result<String, RpcError> {
        answer.map_err(|text| self.protocol(format!("{stage} refused: {text}")))
    }

    fn protocol(&self, detail: String) -> RpcError {
        RpcError::Protocol {
            peer: self.peer.clone(),
            detail,
        }
    }

    /// Reads a multi-line body after +OK, undoing byte-stuffing (RFC 1939 §3). Past
    /// `bytes_max` it fails, or with `truncate` keeps reading to the end but drops the
    /// rest, which keeps the session usable.
    async fn multi_line(&mut self, bytes_max: usize, truncate: bool) -> Result<Vec<u8>, RpcError> {
        let peer = self.peer.clone();
        within(self.io_timeout, &peer, async {
            let mut out = Vec::new();
            let mut line = Vec::new();
            loop {
                read_line_with(
                    &mut self.stream,
                    &mut line,
                    LINE_BYTES_MAX,
                    Overflow::Truncate,
                    &self.peer,
                )
                .await?;
                if line == b".\r\n" || line == b".\n" {
                    return Ok(out);
                }
                let content = if line.starts_with(b".") {
                    &line[1..]
                } else {
                    &line[..]
                };
                if out.len() + content.len() > bytes_max {
                    if truncate {
                        continue;
                    }
                    return Err(
                        self.protocol(format!("multi-line answer longer than {bytes_max} bytes"))
                    );
                }
                out.extend_from_slice(content);
            }
        })
        .await
    }

    async fn listing(&mut self, command: &[u8]) -> Result<Vec<(u32, String)>, RpcError> {
        let answer = self.command(command).await?;
        self.expect_ok(answer, "listing")?;
        let body = self.multi_line(LISTING_ENTRIES_MAX * 80, false).await?;
        let mut entries = Vec::new();
        for line in String::from_utf8_lossy(&body).lines() {
            let mut words = line.split_whitespace();
            let (Some(number), Some(value)) = (words.next(), words.next()) else {
                return Err(self.protocol(format!("malformed listing line {line:?}")));
            };
            let number = number
                .parse::<u32>()
                .map_err(|_| self.protocol(format!("bad message number {number:?}")))?;
            entries.push((number, value.to_owned()));
        }
        Ok(entries)
    }

    /// The mailbox: UIDL joined with LIST, in message-number order.
    pub(crate) async fn entries(&mut self) -> Result<Vec<Entry>, RpcError> {
        let uidls = self.listing(b"UIDL\r\n").await?;
        let sizes = self.listing(b"LIST\r\n").await?;
        let sizes: std::collections::HashMap<u32, u64> = sizes
            .into_iter()
            .filter_map(|(number, size)| Some((number, size.parse().ok()?)))
            .collect();
        Ok(uidls
            .into_iter()
            .map(|(number, uidl)| Entry {
                number,
                uidl,
                size: sizes.get(&number).copied().unwrap_or(u64::MAX),
            })
            .collect())
    }

    /// The header section of message `number` (TOP n 0), cut at `bytes_max`.
    pub(crate) async fn top(&mut self, number: u32, bytes_max: usize) -> Result<Vec<u8>, RpcError> {
        let answer = self
            .command(format!("TOP {number} 0\r\n").as_bytes())
            .await?;
        self.expect_ok(answer, "TOP")?;
        self.multi_line(bytes_max, true).await
    }

    pub(crate) async fn retr(
        &mut self,
        number: u32,
        bytes_max: usize,
    ) -> Result<Vec<u8>, RpcError> {
        let answer = self
            .command(format!("RETR {number}\r\n").as_bytes())
            .await?;
        self.expect_ok(answer, "RETR")?;
        self.multi_line(bytes_max, false).await
    }

    pub(crate) async fn dele(&mut self, number: u32) -> Result<(), RpcError> {
        let answer = self
            .command(format!("DELE {number}\r\n").as_bytes())
            .await?;
        self.expect_ok(answer, "DELE").map(|_| ())
    }

    /// Ends the session; only `Ok` means the deletions took effect (RFC 1939 §6).
    pub(crate) async fn quit(mut self) -> Result<(), RpcError> {
        let answer = self.command(b"QUIT\r\n").await?;
        self.expect_ok(answer, "QUIT").map(|_| ())
    }
}
