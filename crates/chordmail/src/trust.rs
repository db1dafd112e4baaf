//! What a node checks and prepares before it binds anything (docs/DESIGN.md §10): a private
//! data directory, the admin token, and the cluster certificates of the ring port.
//! A refused file is a usage error (exit 2) naming the file and the fix; a data
//! directory that cannot be made is a runtime failure (exit 1), as before.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use cm_admin::AdminToken;

use crate::config::{NodeConfig, UsageError};

/// The token file a node makes in its data directory when none is configured.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Random bytes of a generated admin token (256 bits).
const ADMIN_TOKEN_BYTES: usize = 32;
/// Directory levels below `--data` whose files are made private at start-up (the
/// store, `tls/`, `cluster/`); nothing deeper exists.
const DATA_DEPTH_MAX: usize = 2;

/// Makes every file and directory this process creates private to its user (0600 and
/// 0700), then creates `--data` 0700, or narrows an existing one and its files, which
/// an earlier version left world-readable.
pub fn prepare_data_dir(data: &Path) -> anyhow::Result<()> {
    // SAFETY: umask(2) only sets this process's file mode mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .map_err(|error| anyhow::anyhow!("cannot create --data {}: {error}", data.display()))?;
    make_private(data, DATA_DEPTH_MAX)
        .map_err(|error| anyhow::anyhow!("cannot restrict {}: {error}", data.display()))
}

fn make_private(path: &Path, depth_left: usize) -> std::io::Result<()> {
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        if depth_left > 0 {
            for entry in std::fs::read_dir(path)? {
                make_private(&entry?.path(), depth_left - 1)?;
            }
        }
    } else if metadata.is_file() {
        let mode = metadata.permissions().mode() & 0o777;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// The admin token's file: `--admin-token-file`, else `DATA/admin.token`; and the
/// token, unless that default file does not exist yet (see [`make_admin_token`]).
pub fn admin_token(config: &NodeConfig) -> Result<(Option<AdminToken>, PathBuf), UsageError> {
    match &config.admin_token_file {
        Some(path) => Ok((
            Some(read_token_file(path, "--admin-token-file")?),
            path.clone(),
        )),
        None => {
            let path = config.data.join(ADMIN_TOKEN_FILE);
            if path.exists() {
                Ok((Some(read_token_file(&path, "the admin token")?), path))
            } else {
                Ok((None, path))
            }
        }
    }
}

/// Makes the admin token file (0600) of a node's first start, in its data directory.
pub fn make_admin_token(path: &Path) -> anyhow::Result<AdminToken> {
    let token = new_token_text();
    write_new_private(path, format!("{token}\n").as_bytes()).map_err(|error| {
        anyhow::anyhow!("cannot create the admin token {}: {error}", path.display())
    })?;
    tracing::info!(path = %path.display(), "generated the admin API token");
    Ok(AdminToken::new(&token).expect("a generated token has the accepted shape"))
}

/// Reads a token file that only its owner may read.
pub fn read_token_file(path: &Path, what: &str) -> Result<AdminToken, UsageError> {
    cm_tls::cluster::check_private_file(path)
        .map_err(|error| UsageError(format!("{what}: {error}")))?;
    let text = std::fs::read_to_string(path)
        .map_err(|error| UsageError(format!("cannot read {what} {}: {error}", path.display())))?;
    AdminToken::new(&text)
        .map_err(|error| UsageError(format!("{what} {}: {error}", path.display())))
}

/// 256 random bits as lower-case hex.
pub fn new_token_text() -> String {
    let bytes: [u8; ADMIN_TOKEN_BYTES] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Writes a file that must not exist yet, mode 0600 from its creation on.
pub fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The ring port's mutual TLS, or `None` (plaintext) with a warning: the
/// configuration allowed that only on loopback or with `--insecure-ring`.
pub fn cluster_tls(config: &NodeConfig) -> Result<Option<cm_net::ClusterTls>, UsageError> {
    let Some(files) = &config.cluster else {
        tracing::warn!(
            addr = %config.addr,
            "the ring port runs without TLS: any local process can join or read the ring; \
             use `chordmail cert` and --cluster-ca/--cluster-cert/--cluster-key"
        );
        return Ok(None);
    };
    let tls = cm_net::ClusterTls::load(&files.ca, &files.cert, &files.key)
        .map_err(|error| UsageError(format!("cluster TLS: {error}")))?;
    Ok(Some(tls))
}

/// Refuses a `--tls-key` that others may read.
pub fn check_tls_key(config: &NodeConfig) -> Result<(), UsageError> {
    match &config.tls_key {
        Some(key) => cm_tls::cluster::check_private_file(key)
            .map_err(|error| UsageError(format!("--tls-key: {error}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_data_directory_and_its_files_become_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = data.join("store.redb");
        std::fs::write(&store, "x").unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
        prepare_data_dir(&data).unwrap();
        assert_eq!((mode(&data), mode(&store)), (0o700, 0o600));
    }

    #[test]
    fn generated_tokens_are_256_bits_and_differ() {
        let (first, second) = (new_token_text(), new_token_text());
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }
}
