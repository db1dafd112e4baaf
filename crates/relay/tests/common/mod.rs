//! What the relay tests share: a fake resolver and a scripted SMTP server on loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use cm_relay::{DnsFailure, MxRecord, Resolver};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Answers DNS questions from tables; a name missing from a table is NXDOMAIN.
#[derive(Default)]
pub struct FakeDns {
    pub mx: HashMap<String, Result<Vec<MxRecord>, DnsFailure>>,
    pub ips: HashMap<String, Vec<IpAddr>>,
}

impl FakeDns {
    pub fn with_mx(mut self, domain: &str, records: &[(u16, &str)]) -> FakeDns {
        let records = records
            .iter()
            .map(|&(preference, exchange)| MxRecord {
                preference,
                exchange: exchange.to_string(),
            })
            .collect();
        self.mx.insert(domain.to_string(), Ok(records));
        self
    }

    pub fn with_ip(mut self, host: &str, ip: &str) -> FakeDns {
        self.ips
            .entry(host.to_string())
            .or_default()
            .push(ip.parse().unwrap());
        self
    }
}

impl Resolver for FakeDns {
    async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, DnsFailure> {
        match self.mx.get(domain) {
            Some(answer) => answer.clone(),
            None if self.ips.contains_key(domain) => Ok(Vec::new()),
            None => Err(DnsFailure::NoSuchDomain),
        }
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        match self.ips.get(host) {
            Some(ips) => Ok(ips.clone()),
            None if self.mx.contains_key(host) => Ok(Vec::new()),
            None => Err(DnsFailure::NoSuchDomain),
        }
    }
}

/// The RCPT reply for a recipient; `None` closes the connection instead.
pub type RcptReply = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How the scripted server answers.
#[derive(Clone)]
pub struct Script {
    pub greeting: String,
    /// `None` refuses EHLO with 502, so the client must fall back to HELO.
    pub ehlo_keywords: Option<Vec<String>>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Closes the connection right after answering 220 to STARTTLS.
    pub break_tls: bool,
    pub mail_reply: String,
    pub rcpt_reply: RcptReply,
    pub data_reply: String,
    /// The reply to the final dot; `None` closes the connection instead.
    pub final_reply: Option<String>,
    /// Never sends the greeting (a server that accepts and hangs).
    pub silent: bool,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            greeting: "220 mx.test ESMTP scripted".to_string(),
            ehlo_keywords: Some(vec!["PIPELINING".to_string(), "8BITMIME".to_string()]),
            tls: None,
            break_tls: false,
            mail_reply: "250 2.1.0 ok".to_string(),
            rcpt_reply: Arc::new(|_| Some("250 2.1.5 ok".to_string())),
            data_reply: "354 go ahead".to_string(),
            final_reply: Some("250 2.0.0 queued as 42".to_string()),
            silent: false,
        }
    }
}

/// One mail transaction as the server saw it, DATA already un-stuffed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub mail_from: String,
    pub accepted_rcpts: Vec<String>,
    pub data: Option<Vec<u8>>,
}

/// One connection as the server saw it.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub commands: Vec<String>,
    pub tls: bool,
    pub transactions: Vec<Transaction>,
}

pub struct Server {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Connection>>>,
}

impl Server {
    pub fn connections(&self) -> Vec<Connection> {
        self.log.lock().unwrap().clone()
    }

    /// The messages the server took responsibility for (a 2xx to the final dot).
    pub fn delivered(&self) -> Vec<Transaction> {
        self.connections()
            .into_iter()
            .flat_map(|connection| connection.transactions)
            .filter(|transaction| transaction.data.is_some())
            .collect()
    }
}

/// Starts a scripted server on `ip` (port 0 picks a free one) that serves
/// connections until the test ends.
pub async fn start(ip: &str, port: u16, script: Script) -> Server {
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let server_log = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let connection_idx = {
                let mut log = server_log.lock().unwrap();
                log.push(Connection::default());
                log.len() - 1
            };
            tokio::spawn(serve(
                stream,
                script.clone(),
                server_log.clone(),
                connection_idx,
            ));
        }
    });
    Server { addr, log }
}

/// Starts two scripted servers on the same port of 127.0.0.1 and 127.0.0.2, as
/// two MX hosts must be when DNS gives no ports.
pub async fn start_pair(first: Script, second: Script) -> (Server, Server) {
    for _ in 0..20 {
        let server_a = start("127.0.0.1", 0, first.clone()).await;
        if TcpListener::bind(("127.0.0.2", server_a.addr.port()))
            .await
            .is_ok()
        {
            // The probe listener is dropped here, so the port is free again.
            let server_b = start("127.0.0.2", server_a.addr.port(), second.clone()).await;
            return (server_a, server_b);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

async fn serve(
    stream: TcpStream,
    script: Script,
    log: Arc<Mutex<Vec<Connection>>>,
    connection_idx: usize,
) {
    if script.silent {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        return;
    }
    let mut reader = BufReader::new(stream);
    let _ = reader
        .get_mut()
        .write_all(format!("{}\r\n", script.greeting).as_bytes())
        .await;
    if !script.greeting.starts_with('2') {
        return;
    }
    let Some(reader) = session(reader, &script, &log, connection_idx).await else {
        return;
    };
    let Some(tls) = &script.tls else { return };
    if script.break_tls {
        return;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
    let Ok(tls_stream) = acceptor.accept(reader.into_inner()).await else {
        return;
    };
    log.lock().unwrap()[connection_idx].tls = true;
    session(BufReader::new(tls_stream), &script, &log, connection_idx).await;
}

/// Serves commands until QUIT, a scripted drop, or STARTTLS (then returns the reader
/// for the caller to upgrade).
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut reader: BufReader<S>,
    script: &Script,
    log: &Arc<Mutex<Vec<Connection>>>,
    connection_idx: usize,
) -> Option<BufReader<S>> {
    let record = |f: &dyn Fn(&mut Connection)| f(&mut log.lock().unwrap()[connection_idx]);
    let mut transaction: Option<Transaction> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let command = line.trim_end().to_string();
        record(&|connection| connection.commands.push(command.clone()));
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => match &script.ehlo_keywords {
                None => "502 5.5.1 EHLO not implemented".to_string(),
                Some(keywords) => {
                    let mut keywords = keywords.clone();
                    if script.tls.is_some() && !log.lock().unwrap()[connection_idx].tls {
                        keywords.push("STARTTLS".to_string());
                    }
                    let mut reply = "250-mx.test hello".to_string();
                    for (keyword_idx, keyword) in keywords.iter().enumerate() {
                        let separator = if keyword_idx + 1 == keywords.len() {
                            ' '
                        } else {
                            '-'
                        };
                        reply.push_str(&format!("\r\n250{separator}{keyword}"));
                    }
                    if keywords.is_empty() {
                        reply = "250 mx.test hello".to_string();
                    }
                    reply
                }
            },
            "HELO" => "250 mx.test".to_string(),
            "STARTTLS" => {
                reader
                    .get_mut()
                    .write_all(b"220 2.0.0 ready\r\n")
                    .await
                    .ok()?;
                return Some(reader);
            }
            "MAIL" => {
                if script.mail_reply.starts_with('2') {
                    transaction = Some(Transaction {
                        mail_from: command.clone(),
                        ..Transaction::default()
                    });
                }
                script.mail_reply.clone()
            }
            "RCPT" => {
                let recipient = command
                    .split_once('<')
                    .map(|(_, rest)| rest.trim_end_matches('>'))
                    .unwrap_or("");
                let reply = (script.rcpt_reply)(recipient)?;
                if reply.starts_with('2')
                    && let Some(transaction) = &mut transaction
                {
                    transaction.accepted_rcpts.push(recipient.to_string());
                }
                reply
            }
            "DATA" => {
                reader
                    .get_mut()
                    .write_all(format!("{}\r\n", script.data_reply).as_bytes())
                    .await
                    .ok()?;
                if !script.data_reply.starts_with('3') {
                    continue;
                }
                let data = read_data(&mut reader).await?;
                let final_reply = script.final_reply.clone()?;
                if let Some(mut finished) = transaction.take() {
                    if final_reply.starts_with('2') {
                        finished.data = Some(data);
                    }
                    record(&|connection| connection.transactions.push(finished.clone()));
                }
                final_reply
            }
            "RSET" => {
                if let Some(unfinished) = transaction.take() {
                    record(&|connection| connection.transactions.push(unfinished.clone()));
                }
                "250 2.0.0 ok".to_string()
            }
            "QUIT" => {
                let _ = reader.get_mut().write_all(b"221 2.0.0 bye\r\n").await;
                return None;
            }
            _ => "500 5.5.2 unknown command".to_string(),
        };
        reader
            .get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .ok()?;
    }
}

/// Reads DATA up to the lone dot and undoes the dot-stuffing (RFC 5321 §4.5.2).
async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        if line == b".\r\n" {
            return Some(data);
        }
        let unstuffed = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
    }
}

/// A throwaway certificate for the scripted server's STARTTLS.
pub fn tls_config() -> Arc<rustls::ServerConfig> {
    let generated = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(generated.cert.der().to_vec());
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    Arc::new(config)
}
