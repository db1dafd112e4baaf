//! What the shells' tests share: the client side of STARTTLS/STLS.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// Runs a client TLS handshake for `localhost` on `stream`, trusting only the
/// self-signed certificate `cm_tls` keeps under `data_dir`. Panics on failure:
/// for tests only.
pub async fn connect_tls<S>(data_dir: &Path, stream: S) -> TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(data_dir.join("tls/self-signed.crt")).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, stream).await.unwrap()
}
