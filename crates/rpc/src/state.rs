//! The service runner's durable record of replies, one small file per request id.
//!
//! A record is written (and fsynced, with its directory) before the reply is sent,
//! and marked sent after the server accepted the reply. So after a crash a request
//! seen again is answered from the record instead of running the handler again,
//! and a request whose reply was already accepted is only deleted.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::{Reply, RpcError};

const MAGIC: &str = "chordmail-rpc-record 1";
/// Records older than this are removed at start-up: a duplicate of a request this
/// old would be a mail stuck somewhere for a week, not a retry.
pub const RECORD_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Reading a record never allocates more than this (a reply plus its header lines).
const RECORD_BYTES_MAX: u64 = crate::MESSAGE_BYTES_MAX as u64 + 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The reply exists but the server has not accepted it yet.
    Pending(Reply),
    /// The server accepted the reply (250); only the request's deletion remains.
    Sent { status: u8 },
}

#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory and drops records past [`RECORD_RETENTION`].
    pub fn open(path: &Path) -> Result<StateDir, RpcError> {
        let state = StateDir {
            path: path.to_owned(),
        };
        fs::create_dir_all(path).map_err(|error| state.error(error))?;
        let now = SystemTime::now();
        for entry in fs::read_dir(path).map_err(|error| state.error(error))? {
            let entry = entry.map_err(|error| state.error(error))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let modified = entry.metadata().and_then(|metadata| metadata.modified());
            if let Ok(modified) = modified
                && now.duration_since(modified).unwrap_or_default() > RECORD_RETENTION
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(state)
    }

    fn error(&self, source: std::io::Error) -> RpcError {
        RpcError::State {
            path: self.path.clone(),
            source,
        }
    }

    fn file_of(&self, request_id: &str) -> PathBuf {
        self.path
            .join(hex::encode(&Sha256::digest(request_id.as_bytes())[..16]))
    }

    pub fn load(&self, request_id: &str) -> Result<Option<Record>, RpcError> {
        let path = self.file_of(request_id);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.error(error)),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, RECORD_BYTES_MAX), &mut bytes)
            .map_err(|error| self.error(error))?;
        let corrupt = || {
            self.error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("corrupt record {}", path.display()),
            ))
        };
        let mut parts = bytes.splitn(4, |byte| *byte == b'\n');
        let (Some(magic), Some(id), Some(state), body) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(corrupt());
        };
        if magic != MAGIC.as_bytes() || id != request_id.as_bytes() {
            return Err(corrupt());
        }
        let state = String::from_utf8_lossy(state);
        let (kind, status) = state.split_once(' ').ok_or_else(corrupt)?;
        let status: u8 = status.parse().map_err(|_| corrupt())?;
        match kind {
            "pending" => Ok(Some(Record::Pending(Reply {
                status,
                body: body.unwrap_or_default().to_vec(),
            }))),
            "sent" => Ok(Some(Record::Sent { status })),
            _ => Err(corrupt()),
        }
    }

    /// Writes the record durably: temporary file, fsync, rename, fsync of the directory.
    pub fn store(&self, request_id: &str, record: &Record) -> Result<(), RpcError> {
        assert!(
            !request_id.contains('\n'),
            "request ids are single header tokens"
        );
        let path = self.file_of(request_id);
        let temporary = path.with_extension("tmp");
        let (kind, status, body): (&str, u8, &[u8]) = match record {
            Record::Pending(reply) => ("pending", reply.status, &reply.body),
            Record::Sent { status } => ("sent", *status, &[]),
        };
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&temporary)?;
            file.write_all(format!("{MAGIC}\n{request_id}\n{kind} {status}\n").as_bytes())?;
            file.write_all(body)?;
            file.sync_all()?;
            fs::rename(&temporary, &path)?;
            fs::File::open(&self.path)?.sync_all()
        };
        write().map_err(|error| self.error(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.load("a@x").unwrap(), None);
        let pending = Record::Pending(Reply {
            status: 3,
            body: b"line\nbinary\x00\xff".to_vec(),
        });
        state.store("a@x", &pending).unwrap();
        assert_eq!(state.load("a@x").unwrap(), Some(pending));
        state.store("a@x", &Record::Sent { status: 3 }).unwrap();
        let reopened = StateDir::open(dir.path()).unwrap();
        assert_eq!(
            reopened.load("a@x").unwrap(),
            Some(Record::Sent { status: 3 })
        );
        assert_eq!(reopened.load("b@x").unwrap(), None);
    }
}
