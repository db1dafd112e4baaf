//! Mutual TLS on the ring port (docs/DESIGN.md §10): the server asks every peer for a
//! certificate that chains to the cluster CA, and every outgoing channel presents this
//! node's certificate and accepts only a server whose certificate chains to that CA
//! and covers the whole ring address dialled (host and port), so that a member cannot
//! answer for another member on the same host.
//!
//! The certificates themselves are made by `cm_tls::cluster`; this module loads them
//! and hands them to tonic (rustls with the `ring` provider, no OpenSSL).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
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
    #[error("{path} holds no usable CA certificate: {reason}")]
    Ca { path: PathBuf, reason: String },
}

/// The three cluster files of a node: the CA it trusts, its certificate and its key.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// The CA-checking half of every outgoing channel's verifier.
    webpki: Arc<WebPkiServerVerifier>,
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
        let ca_pem = read(ca)?;
        let ca_error = |reason: String| ClusterTlsError::Ca {
            path: ca.to_path_buf(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|error| ca_error(error.to_string()))?;
            roots
                .add(cert)
                .map_err(|error| ca_error(error.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_error("no certificate in the file".to_owned()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|error| ca_error(error.to_string()))?;
        Ok(ClusterTls {
            ca_pem,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            webpki,
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

    /// An outgoing channel's side: this node's identity; the server is checked by
    /// [`ClusterTls::verifier_for`].
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// The verifier of the channel to `ring_addr`: the CA is the only trust anchor,
    /// and the server's certificate must cover `ring_addr`.
    pub fn verifier_for(&self, ring_addr: &str) -> Arc<dyn ServerCertVerifier> {
        Arc::new(RingAddrVerifier {
            webpki: self.webpki.clone(),
            ring_addr: ring_addr.to_owned(),
        })
    }
}

/// WebPKI's checks (chain to the cluster CA, validity, the host as a subject name)
/// plus the whole ring address.
#[derive(Debug)]
struct RingAddrVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    ring_addr: String,
}

impl ServerCertVerifier for RingAddrVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if !cm_tls::cluster::covers(end_entity, &self.ring_addr) {
            return Err(rustls::Error::General(format!(
                "the certificate of the node at {} is made for another ring address",
                self.ring_addr
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cm_ring::{LeaveNotice, NodeRef, RingConfig};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{Peers, RingDriver, RingOptions, Timing};

    const RPC_TIMEOUT: Duration = Duration::from_millis(1000);

    fn certificates(root: &Path, ca_name: &str, addr: &str, out_name: &str) -> ClusterTls {
        let ca = root.join(ca_name);
        if !ca.join(cm_tls::cluster::CA_KEY_FILE).exists() {
            cm_tls::cluster::create_ca(&ca).unwrap();
        }
        let out = root.join(out_name);
        cm_tls::cluster::create_node_cert(&ca, addr, &out).unwrap();
        ClusterTls::load(
            &ca.join(cm_tls::cluster::CA_CERT_FILE),
            &out.join(cm_tls::cluster::NODE_CERT_FILE),
            &out.join(cm_tls::cluster::NODE_KEY_FILE),
        )
        .unwrap()
    }

    async fn free_addr() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn options(me: NodeRef, tls: ClusterTls) -> RingOptions {
        RingOptions {
            me,
            config: RingConfig::new(16, 1),
            entry: None,
            remembered: Vec::new(),
            timing: Timing::default(),
            on_peers_changed: Box::new(|_| {}),
            tls: Some(tls),
        }
    }

    /// Goal: every ring RPC needs a certificate of the cluster CA, a member cannot
    /// claim another ring address, and a caller trusts only the server whose
    /// certificate covers the address it dialled. Method: a one-node TLS ring; call
    /// all four ring methods in plaintext and with a certificate of another CA, and
    /// notify/leave claiming a third address with a member certificate (all refused,
    /// the node's predecessor stays unset); then the same calls as a member (the
    /// positive control); then a second node serving on the third address with a
    /// member certificate made for another address, which its caller refuses.
    #[tokio::test]
    async fn ring_calls_need_a_cluster_certificate_covering_the_claim() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node_addr = listener.local_addr().unwrap().to_string();
        let member_addr = free_addr().await;
        let node_tls = certificates(dir.path(), "ca", &node_addr, "node");
        let member_tls = certificates(dir.path(), "ca", &member_addr, "member");
        let stranger_tls = certificates(dir.path(), "other-ca", &member_addr, "stranger");

        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let me = NodeRef {
            id: 1000,
            addr: node_addr.clone(),
        };
        let ring = RingDriver::start(
            options(me.clone(), node_tls),
            listener,
            shutdown.clone(),
            &mut tasks,
            tonic::service::Routes::default(),
        )
        .await
        .unwrap();

        let member = Peers::with_tls(RPC_TIMEOUT, Some(&member_tls));
        let plaintext = Peers::new(RPC_TIMEOUT);
        let stranger = Peers::with_tls(RPC_TIMEOUT, Some(&stranger_tls));
        let claimed = NodeRef {
            id: 500,
            addr: member_addr.clone(),
        };
        let third = NodeRef {
            id: 600,
            addr: free_addr().await,
        };
        let leave = |leaving: &NodeRef| LeaveNotice {
            leaving: leaving.clone(),
            predecessor: None,
            successors: Vec::new(),
        };

        for (peers, what) in [(&plaintext, "plaintext"), (&stranger, "another CA")] {
            assert!(peers.get_state(&node_addr).await.is_err(), "{what}");
            assert!(peers.next_hop(&me, 7).await.is_err(), "{what}");
            assert!(peers.notify(&me, &claimed).await.is_err(), "{what}");
            assert!(peers.leave(&me, &leave(&claimed)).await.is_err(), "{what}");
            assert_eq!(ring.predecessor(), None, "{what}");
        }
        assert!(
            member.notify(&me, &third).await.is_err(),
            "a claim of a third address"
        );
        assert!(member.leave(&me, &leave(&third)).await.is_err());
        assert_eq!(ring.predecessor(), None);

        assert!(member.get_state(&node_addr).await.is_ok());
        assert!(member.next_hop(&me, 7).await.is_ok());
        assert!(member.notify(&me, &claimed).await.is_ok());
        assert_eq!(ring.predecessor(), Some(claimed.clone()));
        assert!(member.leave(&me, &leave(&claimed)).await.is_ok());

        let impostor_listener = TcpListener::bind(&third.addr).await.unwrap();
        let impostor_tls = certificates(dir.path(), "ca", &member_addr, "impostor");
        RingDriver::start(
            options(third.clone(), impostor_tls),
            impostor_listener,
            shutdown.clone(),
            &mut tasks,
            tonic::service::Routes::default(),
        )
        .await
        .unwrap();
        let dialler = Peers::with_tls(RPC_TIMEOUT, Some(&member_tls));
        assert!(dialler.get_state(&third.addr).await.is_err());
        assert!(dialler.get_state(&node_addr).await.is_ok());
        shutdown.cancel();
    }
}
