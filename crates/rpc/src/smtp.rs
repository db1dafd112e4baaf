//! A small SMTP submission client (RFC 5321, RFC 4954 AUTH PLAIN, RFC 1870 SIZE):
//! one connection per message, which keeps failover simple.

use std::time::Duration;

use base64::Engine as _;
use tokio::io::BufStream;
use tokio::net::TcpStream;

use crate::io::{connect, line_text, read_line, within, write_all_flush};
use crate::server::Server;
use crate::{Credentials, RpcError};

/// RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; servers' texts are shorter.
const REPLY_LINE_BYTES_MAX: usize = 4096;
/// A multi-line EHLO answer longer than this is not a mail server we want to talk to.
const REPLY_LINES_MAX: usize = 64;

/// One message to submit: the envelope and the whole message with CRLF line ends.
pub(crate) struct Outgoing<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub message: &'a [u8],
    pub eight_bit: bool,
}

struct Reply {
    code: u16,
    text: String,
    lines: Vec<String>,
}

struct Session {
    stream: BufStream<TcpStream>,
    peer: String,
    io_timeout: Duration,
}

impl Session {
    async fn reply(&mut self) -> Result<Reply, RpcError> {
        let mut lines = Vec::new();
        let mut line = Vec::new();
        loop {
            read_line(
                &mut self.stream,
                &mut line,
                REPLY_LINE_BYTES_MAX,
                &self.peer,
            )
            .await?;
            let text = line_text(&line);
            let code = text
                .get(..3)
                .and_then(|code| code.parse::<u16>().ok())
                .filter(|code| (200..600).contains(code));
            let Some(code) = code else {
                return Err(self.protocol(format!("malformed reply line {text:?}")));
            };
            let last = text.as_bytes().get(3) != Some(&b'-');
            lines.push(text.get(4..).unwrap_or("").to_owned());
            if last {
                return Ok(Reply {
                    code,
                    text: lines.join(" "),
                    lines,
                });
            }
            if lines.len() >= REPLY_LINES_MAX {
                return Err(self.protocol("reply with too many lines".to_owned()));
            }
        }
    }

    fn protocol(&self, detail: String) -> RpcError {
        RpcError::Protocol {
            peer: self.peer.clone(),
            detail,
        }
    }

    /// Sends `command` (not logged: it may carry credentials) and expects a 2xx or 3xx.
    async fn step(&mut self, command: &[u8], stage: &str) -> Result<Reply, RpcError> {
        let peer = self.peer.clone();
        within(self.io_timeout, &peer, async {
            write_all_flush(&mut self.stream, command, &peer).await?;
            let reply = self.reply().await?;
            expect_success(&peer, stage, reply)
        })
        .await
    }
}

fn expect_success(peer: &str, stage: &str, reply: Reply) -> Result<Reply, RpcError> {
    match reply.code {
        200..400 => Ok(reply),
        400..500 => Err(RpcError::Deferred {
            peer: peer.to_owned(),
            stage: stage.to_owned(),
            code: reply.code,
            text: reply.text,
        }),
        _ => Err(RpcError::Rejected {
            peer: peer.to_owned(),
            stage: stage.to_owned(),
            code: reply.code,
            text: reply.text,
        }),
    }
}

/// Submits one message through `server`; `Ok` means the server answered 250 to the
/// end of DATA, so it took responsibility for the message.
pub(crate) async fn submit(
    server: &Server,
    credentials: &Credentials,
    outgoing: &Outgoing<'_>,
    io_timeout: Duration,
) -> Result<(), RpcError> {
    let peer = server.smtp_addr();
    let mut session = Session {
        stream: connect(&peer, io_timeout).await?,
        peer: peer.clone(),
        io_timeout,
    };
    let greeting = within(io_timeout, &peer, session.reply()).await?;
    expect_success(&peer, "greeting", greeting)?;
    let ehlo = session.step(b"EHLO chordmail-rpc\r\n", "EHLO").await?;
    let keywords: Vec<String> = ehlo
        .lines
        .iter()
        .skip(1)
        .map(|line| line.to_ascii_uppercase())
        .collect();
    let size_max = keywords
        .iter()
        .find_map(|line| {
            line.strip_prefix("SIZE ")
                .and_then(|size| size.trim().parse::<u64>().ok())
        })
        .filter(|size| *size > 0);
    if let Some(size_max) = size_max
        && outgoing.message.len() as u64 > size_max
    {
        return Err(RpcError::TooLarge {
            encoded_bytes: outgoing.message.len(),
            bytes_max: size_max as usize,
        });
    }
    let has_8bitmime = keywords.iter().any(|line| line == "8BITMIME");
    let has_auth_plain = keywords.iter().any(|line| {
        line.starts_with("AUTH ")
            && line
                .split_whitespace()
                .any(|mechanism| mechanism == "PLAIN")
    });
    if has_auth_plain {
        let token = format!("\0{}\0{}", credentials.account, credentials.password);
        let command = format!(
            "AUTH PLAIN {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(token)
        );
        match session.step(command.as_bytes(), "AUTH PLAIN").await {
            Ok(_) => {}
            Err(RpcError::Rejected { text, .. }) => {
                return Err(RpcError::Auth {
                    peer,
                    account: credentials.account.clone(),
                    text,
                });
            }
            Err(other) => return Err(other),
        }
    }
    let body_parameter = if outgoing.eight_bit && has_8bitmime {
        " BODY=8BITMIME"
    } else {
        ""
    };
    let mail = format!(
        "MAIL FROM:<{}> SIZE={}{body_parameter}\r\n",
        outgoing.from,
        outgoing.message.len()
    );
    session
        .step(mail.as_bytes(), &format!("sender {}", outgoing.from))
        .await?;
    let rcpt = format!("RCPT TO:<{}>\r\n", outgoing.to);
    session
        .step(rcpt.as_bytes(), &format!("recipient {}", outgoing.to))
        .await?;
    session.step(b"DATA\r\n", "DATA").await?;
    let data = cm_smtp_proto::data::dot_stuff(outgoing.message);
    session.step(&data, "message").await?;
    // The message is accepted; a failed QUIT changes nothing.
    let _ = session.step(b"QUIT\r\n", "QUIT").await;
    Ok(())
}
