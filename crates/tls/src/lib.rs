//! TLS server configuration for SMTP STARTTLS (RFC 3207) and POP3 STLS (RFC 2595).
//!
//! The certificate and key come from PEM files named in the configuration, or, when
//! none are named, from a self-signed certificate generated on first start and kept
//! in `--data/tls/` so that clients that pinned it keep trusting it across restarts.
//! This crate does no I/O on sockets; the shells wrap the returned configuration in a
//! `tokio_rustls::TlsAcceptor`.
//!
//! [`cluster`] makes the cluster CA and node certificates of the ring port's mutual
//! TLS (docs/DESIGN.md §10) and checks that a peer's certificate covers a ring address.

pub mod cluster;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("set both a TLS certificate and a key, or neither")]
    HalfConfigured,
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("certificate and key do not form a usable TLS configuration: {0}")]
    Config(String),
    #[error("{path} exists already; remove it first or use another directory")]
    Exists { path: PathBuf },
    #[error("{addr:?} is not a ring address HOST:PORT")]
    BadAddr { addr: String },
    #[error(
        "{path} may be read by other users (mode {mode:o}): run chmod 600 on it, and replace the secret if others could have read it"
    )]
    Readable { path: PathBuf, mode: u32 },
}

/// Builds the server configuration from `cert` and `key`, or from the self-signed
/// pair in `data_dir/tls/` (generated for `hostname` if missing).
pub fn server_config(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    hostname: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(cert), Some(key)) => (cert.to_path_buf(), key.to_path_buf()),
        (None, None) => ensure_self_signed(&data_dir.join("tls"), hostname)?,
        _ => return Err(TlsError::HalfConfigured),
    };
    let read_error = |path: &Path, error: rustls::pki_types::pem::Error| TlsError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|error| read_error(&cert_path, error))?
        .collect::<Result<_, _>>()
        .map_err(|error| read_error(&cert_path, error))?;
    if chain.is_empty() {
        return Err(TlsError::Read {
            path: cert_path,
            reason: "no certificate in the file".to_owned(),
        });
    }
    let private_key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|error| read_error(&key_path, error))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    Ok(Arc::new(config))
}

fn ensure_self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("self-signed.crt");
    let key_path = dir.join("self-signed.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let generated =
        rcgen::generate_simple_self_signed(vec![hostname.to_owned(), "localhost".to_owned()])
            .map_err(|error| TlsError::Generate(error.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, generated.cert.pem()).map_err(|source| TlsError::Write {
        path: cert_path.clone(),
        source,
    })?;
    tracing::info!(path = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        server_config(dir.path(), None, None, "mail.test").unwrap();
        let first = std::fs::read(dir.path().join("tls/self-signed.crt")).unwrap();
        server_config(dir.path(), None, None, "mail.test").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("tls/self-signed.crt")).unwrap(),
            first
        );
    }

    #[test]
    fn refuses_half_a_configuration_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            server_config(dir.path(), Some(&missing), None, "h"),
            Err(TlsError::HalfConfigured)
        ));
        let error = server_config(dir.path(), Some(&missing), Some(&missing), "h").unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
    }
}
