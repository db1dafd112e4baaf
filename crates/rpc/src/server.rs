//! Where the mail servers are: `HOST[:SMTP[/POP3]]`.

use std::fmt;
use std::str::FromStr;

use crate::RpcError;

/// The standard ports, used when `--server` names only a host.
pub const SMTP_PORT_DEFAULT: u16 = 25;
pub const POP3_PORT_DEFAULT: u16 = 110;
/// A chordmail node serves POP3 at its SMTP port plus 10000 (ring port + 10000 and
/// + 20000, docs/DESIGN.md §2), so `HOST:SMTP` alone names a chordmail node completely.
pub const POP3_OFFSET_FROM_SMTP: u16 = 10_000;

/// One mail server: a host with its SMTP (submission) and POP3 (retrieval) ports.
///
/// Spellings: `HOST` (ports 25 and 110), `HOST:SMTP` (POP3 at SMTP + 10000, the
/// chordmail layout) and `HOST:SMTP/POP3`; an IPv6 host goes in brackets, `[::1]:15000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub smtp_port: u16,
    pub pop3_port: u16,
}

impl Server {
    pub fn smtp_addr(&self) -> String {
        join_host_port(&self.host, self.smtp_port)
    }

    pub fn pop3_addr(&self) -> String {
        join_host_port(&self.host, self.pop3_port)
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.smtp_addr(), self.pop3_port)
    }
}

impl FromStr for Server {
    type Err = RpcError;

    fn from_str(text: &str) -> Result<Server, RpcError> {
        let invalid = || RpcError::InvalidServer(text.to_owned());
        let (host, ports) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(invalid)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
            }
        } else {
            match text.split_once(':') {
                Some((host, ports)) => (host, Some(ports)),
                None => (text, None),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(invalid());
        }
        let parse_port = |port: &str| {
            port.parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(invalid)
        };
        let (smtp_port, pop3_port) = match ports {
            None => (SMTP_PORT_DEFAULT, POP3_PORT_DEFAULT),
            Some(ports) => match ports.split_once('/') {
                Some((smtp, pop3)) => (parse_port(smtp)?, parse_port(pop3)?),
                None => {
                    let smtp_port = parse_port(ports)?;
                    let pop3_port = smtp_port
                        .checked_add(POP3_OFFSET_FROM_SMTP)
                        .ok_or_else(invalid)?;
                    (smtp_port, pop3_port)
                }
            },
        };
        Ok(Server {
            host: host.to_owned(),
            smtp_port,
            pop3_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        type Parsed<'a> = Option<(&'a str, u16, u16)>;
        let table: [(&str, Parsed); 10] = [
            ("mail.example.org", Some(("mail.example.org", 25, 110))),
            ("127.0.0.1:15000", Some(("127.0.0.1", 15000, 25000))),
            ("127.0.0.1:2525/1110", Some(("127.0.0.1", 2525, 1110))),
            ("[::1]:15000", Some(("::1", 15000, 25000))),
            ("[::1]", Some(("::1", 25, 110))),
            ("127.0.0.1:60000", None),
            ("127.0.0.1:0", None),
            (":15000", None),
            ("127.0.0.1:x/1", None),
            ("[::1]15000", None),
        ];
        for (text, expected) in table {
            let parsed = text.parse::<Server>().ok();
            let parsed = parsed
                .as_ref()
                .map(|server| (server.host.as_str(), server.smtp_port, server.pop3_port));
            assert_eq!(parsed, expected, "{text}");
        }
        let server: Server = "[::1]:15000".parse().unwrap();
        assert_eq!(server.pop3_addr(), "[::1]:25000");
    }
}
