//! Cluster certificates for mutual TLS on the ring port (docs/DESIGN.md §10): a cluster CA,
//! node certificates it signs for one ring address each, and the check that a peer's
//! certificate covers the ring address it claims.
//!
//! A node certificate names its ring address twice: the host as an IP or DNS subject
//! alternative name (what TLS clients verify), and the whole `HOST:PORT` as a URI
//! `chordmail://HOST:PORT`, so that two nodes on one host (a `chordmail up` ring, or a
//! host running several nodes) cannot claim each other's ring address.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::TlsError;

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.crt";
pub const NODE_KEY_FILE: &str = "node.key";

/// The URI scheme of the subject alternative name that carries a whole ring address.
const RING_ADDR_URI_SCHEME: &str = "chordmail://";

/// Writes a new cluster CA, `dir/ca.crt` and `dir/ca.key` (0600), creating `dir`
/// (0700). An existing key is never overwritten: every certificate it signed would
/// stop being trusted by nodes given the new one.
pub fn create_ca(dir: &Path) -> Result<(), TlsError> {
    let key_path = dir.join(CA_KEY_FILE);
    if key_path.exists() {
        return Err(TlsError::Exists { path: key_path });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("chordmail cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params);
    let key = KeyPair::generate().map_err(generate_error)?;
    let cert = params.self_signed(&key).map_err(generate_error)?;
    create_private_dir(dir)?;
    crate::write_private(&key_path, key.serialize_pem().as_bytes())?;
    crate::write_private(&dir.join(CA_CERT_FILE), cert.pem().as_bytes())?;
    Ok(())
}

/// Writes `out/node.crt` and `out/node.key` (0600) for the node whose ring address is
/// `ring_addr`, signed by the CA in `ca_dir`.
pub fn create_node_cert(ca_dir: &Path, ring_addr: &str, out: &Path) -> Result<(), TlsError> {
    let (host, _) = split_ring_addr(ring_addr).ok_or_else(|| TlsError::BadAddr {
        addr: ring_addr.to_owned(),
    })?;
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    check_private_file(&ca_key_path)?;
    let ca_key_pem = read_text(&ca_key_path)?;
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_cert_pem = read_text(&ca_cert_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|error| TlsError::Read {
        path: ca_key_path.clone(),
        reason: error.to_string(),
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert_pem, &ca_key).map_err(|error| TlsError::Read {
            path: ca_cert_path.clone(),
            reason: error.to_string(),
        })?;

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&format!("chordmail node {ring_addr}"));
    let host_name = match host.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.to_ascii_lowercase().try_into().map_err(|_| {
            TlsError::BadAddr {
                addr: ring_addr.to_owned(),
            }
        })?),
    };
    let uri = format!("{RING_ADDR_URI_SCHEME}{}", normalize_ring_addr(ring_addr));
    params.subject_alt_names = vec![
        host_name,
        SanType::URI(uri.try_into().map_err(|_| TlsError::BadAddr {
            addr: ring_addr.to_owned(),
        })?),
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both a server (peers dial it) and a client (it dials peers).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    let key = KeyPair::generate().map_err(generate_error)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate_error)?;
    create_private_dir(out)?;
    crate::write_private(&out.join(NODE_KEY_FILE), key.serialize_pem().as_bytes())?;
    crate::write_private(&out.join(NODE_CERT_FILE), cert.pem().as_bytes())?;
    Ok(())
}

/// Whether the certificate `cert_der` (already verified against the cluster CA) names
/// `ring_addr`: its host as an IP or DNS name, and, if the certificate names whole ring
/// addresses (as every certificate `chordmail cert node` makes does), that address.
pub fn covers(cert_der: &[u8], ring_addr: &str) -> bool {
    let Some((host, _)) = split_ring_addr(ring_addr) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    let Ok(Some(names)) = cert.subject_alternative_name() else {
        return false;
    };
    let host_ip = host.parse::<IpAddr>().ok();
    let wanted_uri = format!("{RING_ADDR_URI_SCHEME}{}", normalize_ring_addr(ring_addr));
    let mut host_named = false;
    let mut names_ring_addrs = false;
    let mut ring_addr_named = false;
    for name in &names.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                host_named |= host_ip.is_some_and(|ip| ip_bytes_equal(ip, bytes));
            }
            x509_parser::extensions::GeneralName::DNSName(dns) => {
                host_named |= host_ip.is_none() && dns.eq_ignore_ascii_case(host);
            }
            x509_parser::extensions::GeneralName::URI(uri)
                if uri.starts_with(RING_ADDR_URI_SCHEME) =>
            {
                names_ring_addrs = true;
                ring_addr_named |= uri.eq_ignore_ascii_case(&wanted_uri);
            }
            _ => {}
        }
    }
    host_named && (!names_ring_addrs || ring_addr_named)
}

/// Refuses a secret (key, token, password) file that its group or others may read:
/// such a file has already leaked to every account on the host.
pub fn check_private_file(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = std::fs::metadata(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::Readable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// `HOST:PORT` split at the last colon (`[v6]:PORT` understood); `None` when it is not
/// of that shape.
fn split_ring_addr(ring_addr: &str) -> Option<(&str, u16)> {
    let (host, port) = ring_addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

/// One spelling per ring address, so that `127.0.0.1:5000` and an IPv6 address written
/// in two ways compare equal.
fn normalize_ring_addr(ring_addr: &str) -> String {
    match ring_addr.parse::<SocketAddr>() {
        Ok(addr) => addr.to_string(),
        Err(_) => ring_addr.to_ascii_lowercase(),
    }
}

fn ip_bytes_equal(ip: IpAddr, bytes: &[u8]) -> bool {
    match ip {
        IpAddr::V4(v4) => bytes == v4.octets(),
        IpAddr::V6(v6) => bytes == v6.octets(),
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Certificates are valid for a century: there is no revocation, an operator who
/// needs to withdraw trust makes a new CA (docs/DESIGN.md §10).
fn set_validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2120, 1, 1);
}

fn generate_error(error: rcgen::Error) -> TlsError {
    TlsError::Generate(error.to_string())
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: PathBuf::from(dir),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn node_cert_der(dir: &Path) -> Vec<u8> {
        CertificateDer::from_pem_file(dir.join(NODE_CERT_FILE))
            .unwrap()
            .to_vec()
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_node_certificate_covers_exactly_its_ring_address() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        create_ca(&ca).unwrap();
        let node = dir.path().join("node");
        create_node_cert(&ca, "127.0.0.1:5000", &node).unwrap();
        let der = node_cert_der(&node);
        assert!(covers(&der, "127.0.0.1:5000"));
        assert!(!covers(&der, "127.0.0.1:5001"), "same host, another port");
        assert!(!covers(&der, "127.0.0.2:5000"), "another host");
        assert!(
            !covers(&der, "localhost:5000"),
            "an IP certificate names no DNS host"
        );
        assert!(!covers(&der, "garbage"));
        assert!(!covers(b"not a certificate", "127.0.0.1:5000"));

        let named = dir.path().join("named");
        create_node_cert(&ca, "Mail1.Example.org:7000", &named).unwrap();
        let der = node_cert_der(&named);
        assert!(covers(&der, "mail1.example.org:7000"));
        assert!(!covers(&der, "mail2.example.org:7000"));
        assert!(!covers(&der, "10.0.0.1:7000"));
    }

    #[test]
    fn keys_are_private_and_a_ca_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        create_ca(&ca).unwrap();
        assert_eq!(mode(&ca.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&ca), 0o700);
        let first = std::fs::read(ca.join(CA_KEY_FILE)).unwrap();
        assert!(matches!(create_ca(&ca), Err(TlsError::Exists { .. })));
        assert_eq!(std::fs::read(ca.join(CA_KEY_FILE)).unwrap(), first);

        let node = dir.path().join("node");
        create_node_cert(&ca, "[::1]:5000", &node).unwrap();
        assert_eq!(mode(&node.join(NODE_KEY_FILE)), 0o600);
        assert!(covers(&node_cert_der(&node), "[0:0::1]:5000"));
        assert!(matches!(
            create_node_cert(&ca, "no-port", &node),
            Err(TlsError::BadAddr { .. })
        ));
    }

    #[test]
    fn readable_secret_files_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "x").unwrap();
        for (bits, refused) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bits)).unwrap();
            assert_eq!(check_private_file(&path).is_err(), refused, "mode {bits:o}");
        }
        let error = check_private_file(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }
}
