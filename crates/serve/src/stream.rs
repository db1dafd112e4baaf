//! A connection's stream before and after STARTTLS (RFC 3207) or STLS (RFC 2595).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Plain `S` until [`UpgradableStream::start_tls`], TLS over it afterwards; reads
/// and writes go to whichever is current. Generic over `S` so that sessions run
/// over `tokio::io::duplex` in tests and over TCP in a node.
pub struct UpgradableStream<S> {
    state: State<S>,
}

enum State<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// The handshake took the plain stream and failed: the connection is lost.
    Lost,
}

impl<S: AsyncRead + AsyncWrite + Unpin> UpgradableStream<S> {
    pub fn new(stream: S) -> UpgradableStream<S> {
        UpgradableStream {
            state: State::Plain(stream),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.state, State::Tls(_))
    }

    /// Runs the server side of the TLS handshake on the plain stream, within
    /// `handshake_timeout` (a peer that never finishes it costs a bounded wait).
    /// The caller has dropped any input read before: bytes pipelined behind
    /// STARTTLS/STLS were sent in clear text (RFC 3207 §4.2, CVE-2011-0411).
    ///
    /// Panics if TLS is already active: a session offers the upgrade only once.
    pub async fn start_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        handshake_timeout: Duration,
    ) -> io::Result<()> {
        let State::Plain(plain) = std::mem::replace(&mut self.state, State::Lost) else {
            panic!("start_tls on a stream that is not plain");
        };
        let handshake = TlsAcceptor::from(config).accept(plain);
        let tls = match tokio::time::timeout(handshake_timeout, handshake).await {
            Ok(tls) => tls?,
            Err(_elapsed) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tls handshake timed out",
                ));
            }
        };
        self.state = State::Tls(Box::new(tls));
        Ok(())
    }
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the stream was lost in a failed tls handshake",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for UpgradableStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            State::Tls(stream) => Pin::new(stream).poll_read(context, buffer),
            State::Lost => Poll::Ready(Err(lost())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for UpgradableStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().state {
            State::Plain(stream) => Pin::new(stream).poll_write(context, bytes),
            State::Tls(stream) => Pin::new(stream).poll_write(context, bytes),
            State::Lost => Poll::Ready(Err(lost())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Plain(stream) => Pin::new(stream).poll_flush(context),
            State::Tls(stream) => Pin::new(stream).poll_flush(context),
            State::Lost => Poll::Ready(Err(lost())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            State::Tls(stream) => Pin::new(stream).poll_shutdown(context),
            State::Lost => Poll::Ready(Err(lost())),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Goal: bytes pass through unchanged before the upgrade, and over TLS after
    /// it. Method: a duplex pair, a self-signed certificate from cm-tls and a
    /// rustls client trusting it.
    #[tokio::test]
    async fn plain_then_tls_over_duplex() {
        let dir = tempfile::tempdir().unwrap();
        let server_config = cm_tls::server_config(dir.path(), None, None, "localhost").unwrap();
        let (client_side, server_side) = tokio::io::duplex(64 * 1024);
        let mut server = UpgradableStream::new(server_side);
        let mut client = client_side;

        client.write_all(b"STARTTLS\r\n").await.unwrap();
        let mut line = [0u8; 10];
        server.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"STARTTLS\r\n");
        assert!(!server.is_tls());

        let client_task = tokio::spawn(async move {
            let mut tls = crate::testing::connect_tls(dir.path(), client).await;
            tls.write_all(b"secret\r\n").await.unwrap();
            tls.flush().await.unwrap();
            let mut answer = [0u8; 4];
            tls.read_exact(&mut answer).await.unwrap();
            answer
        });
        server
            .start_tls(server_config, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(server.is_tls());
        let mut secret = [0u8; 8];
        server.read_exact(&mut secret).await.unwrap();
        assert_eq!(&secret, b"secret\r\n");
        server.write_all(b"+OK\n").await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(&client_task.await.unwrap(), b"+OK\n");
    }

    /// Goal: a peer that never starts the handshake costs at most the timeout, and
    /// the stream refuses I/O afterwards. Method: paused time, a silent peer.
    #[tokio::test(start_paused = true)]
    async fn handshake_times_out_and_the_stream_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let server_config = cm_tls::server_config(dir.path(), None, None, "localhost").unwrap();
        let (_client_side, server_side) = tokio::io::duplex(1024);
        let mut server = UpgradableStream::new(server_side);
        let error = server
            .start_tls(server_config, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let error = server.write_all(b"x").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotConnected);
    }
}
