//! Bounded line reading shared by the SMTP and POP3 clients.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::RpcError;

/// What to do with a line longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Protocol lines: a server sending such a line is broken.
    Fail,
    /// Message lines: keep the first bytes, drop the rest, so that one odd mail in a
    /// mailbox cannot stop a poller; the mail then fails to parse and is ignored.
    Truncate,
}

/// Reads one line (with its terminator) into `line`, never buffering more than
/// `line_bytes_max` bytes of it, and failing on EOF mid-line or at once.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    line_bytes_max: usize,
    peer: &str,
) -> Result<(), RpcError> {
    read_line_with(reader, line, line_bytes_max, Overflow::Fail, peer).await
}

pub(crate) async fn read_line_with<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    line_bytes_max: usize,
    overflow: Overflow,
    peer: &str,
) -> Result<(), RpcError> {
    line.clear();
    loop {
        let available = reader
            .fill_buf()
            .await
            .map_err(|error| RpcError::io(peer, error))?;
        if available.is_empty() {
            return Err(RpcError::Protocol {
                peer: peer.to_owned(),
                detail: "connection closed by the server".to_owned(),
            });
        }
        let (n_taken, done) = match available.iter().position(|byte| *byte == b'\n') {
            Some(newline_idx) => (newline_idx + 1, true),
            None => (available.len(), false),
        };
        let n_kept = n_taken.min(line_bytes_max.saturating_sub(line.len()));
        if n_kept < n_taken && overflow == Overflow::Fail {
            return Err(RpcError::Protocol {
                peer: peer.to_owned(),
                detail: format!("server sent a line longer than {line_bytes_max} bytes"),
            });
        }
        line.extend_from_slice(&available[..n_kept]);
        reader.consume(n_taken);
        if done {
            return Ok(());
        }
    }
}

pub(crate) async fn write_all_flush<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    peer: &str,
) -> Result<(), RpcError> {
    writer
        .write_all(bytes)
        .await
        .map_err(|error| RpcError::io(peer, error))?;
    writer
        .flush()
        .await
        .map_err(|error| RpcError::io(peer, error))
}

/// Opens a connection to `peer` within `limit`, with Nagle's algorithm off: the
/// clients send a command and wait for its answer, so nothing is gained by delay.
pub(crate) async fn connect(peer: &str, limit: Duration) -> Result<BufStream<TcpStream>, RpcError> {
    let stream = within(limit, peer, async {
        TcpStream::connect(peer)
            .await
            .map_err(|error| RpcError::io(peer, error))
    })
    .await?;
    let _ = stream.set_nodelay(true);
    Ok(BufStream::new(stream))
}

/// Runs one network step under `limit`, so that a silent server costs a bounded wait.
pub(crate) async fn within<T>(
    limit: Duration,
    peer: &str,
    step: impl Future<Output = Result<T, RpcError>>,
) -> Result<T, RpcError> {
    match tokio::time::timeout(limit, step).await {
        Ok(outcome) => outcome,
        Err(_) => Err(RpcError::Protocol {
            peer: peer.to_owned(),
            detail: format!("no answer within {} ms", limit.as_millis()),
        }),
    }
}

/// The text of a server line without its terminator, lossily decoded for messages.
pub(crate) fn line_text(line: &[u8]) -> String {
    let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    String::from_utf8_lossy(trimmed).into_owned()
}
