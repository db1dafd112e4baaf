//! Mutual TLS on the ring port (DESIGN.md §10): the server asks every peer for a
//! certificate that chains to the cluster CA, and every outgoing channel presents this
//! node's certificate and accepts only a server whose certificate chains to that CA
//! and names the dialled host.
//!
//! The certificates themselves are made by `cm_tls::cluster`; this module loads them
//! and hands them to tonic (rustls with the `ring` provider, no OpenSSL).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A peer that has not finished its TLS handshake after this long is dropped, so that
/// half-open connections cannot pile up on the ring port.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClusterTlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(transparent)]
    Key(#[from] cm_tls::TlsError),
}

/// The three cluster files of a node: the CA it trusts, its certificate and its key.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl ClusterTls {
    /// Reads the three files; the key is refused when others may read it.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<ClusterTls, ClusterTlsError> {
        cm_tls::cluster::check_private_file(key)?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|error| ClusterTlsError::Read {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })
        };
        Ok(ClusterTls {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    /// The ring server's side: this node's identity, and client certificates required
    /// (tonic's `client_auth_optional` stays false) and verified against the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// An outgoing channel's side: the CA is the only trust anchor, and the server's
    /// certificate must name the host of the address dialled.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }
}

/// Whether the peer of `request` may claim the ring address `addr`. Without cluster
/// TLS (`tls_on` false: a loopback or `--insecure-ring` node) every claim passes, as
/// before; with it, the peer's verified certificate must cover the address.
pub fn peer_covers<T>(request: &tonic::Request<T>, tls_on: bool, addr: &str) -> bool {
    if !tls_on {
        return true;
    }
    let Some(certs) = request.peer_certs() else {
        return false;
    };
    certs
        .first()
        .is_some_and(|leaf| cm_tls::cluster::covers(leaf, addr))
}
