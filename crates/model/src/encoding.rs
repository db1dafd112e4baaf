//! The stored and wire form of an account's IMAP data: [`Folders`] and one
//! [`FolderState`] each as one bounded JSON document.
//!
//! One document per folder is the pragmatic choice: a write (a flag, a few UID
//! claims, an expunge) is a small delta document, but the store merges it into the
//! folder's whole document, so a write costs a decode and an encode of the folder
//! (about 150 bytes per message: 10 000 messages are 1.5 MB per STORE), and a read
//! decodes it whole. Row-per-item tables would make writes O(1); that is the way
//! on when folders grow past a few thousand messages. The bounds below keep a peer
//! (or a bug) from growing one document without limit.
//!
//! Decoding checks the data like client input: sizes and counts, flag names in
//! their normal form, non-zero UIDs, folder names within their length.

use crate::folders::{FOLDER_NAME_BYTES_MAX, FOLDERS_PER_ACCOUNT_MAX};
use crate::{FlagName, FolderId, FolderRecord, FolderState, Folders, Lww, MessageId, UidClaim};

/// Encoded bytes of one folder's state at most; a write that would grow a folder
/// past it is refused (IMAP's `NO [LIMIT]`).
pub const FOLDER_STATE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Folder records one account keeps at most, deleted ones included (a deletion is
/// a tombstone kept for ever): room for every live folder and three times as many
/// deleted ones.
pub const FOLDER_RECORDS_MAX: usize = 4 * FOLDERS_PER_ACCOUNT_MAX;

/// Encoded bytes of one account's folder records at most.
pub const FOLDERS_BYTES_MAX: usize = FOLDER_RECORDS_MAX * (2 * FOLDER_NAME_BYTES_MAX + 512);

const _: () = assert!(FOLDERS_BYTES_MAX < FOLDER_STATE_BYTES_MAX);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("encoded IMAP data over {0} bytes")]
    TooLarge(usize),
    #[error("unreadable IMAP data: {0}")]
    Malformed(String),
    #[error("invalid IMAP data: {0}")]
    Invalid(&'static str),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FolderStateDocument {
    received: Vec<(MessageId, u64)>,
    tombstones: Vec<(MessageId, u64)>,
    flags: Vec<(MessageId, FlagName, Lww<bool>)>,
    uids: Vec<UidClaim>,
}

impl FolderState {
    /// Nothing in it: a delta that changes nothing.
    pub fn is_empty(&self) -> bool {
        self.mailbox.received.is_empty()
            && self.mailbox.tombstones.is_empty()
            && self.flags.registers.is_empty()
            && self.uids.claims.is_empty()
    }

    /// The canonical form: equal states encode to equal bytes (every part is an
    /// ordered map or set), which anti-entropy's digests rely on.
    pub fn encode(&self) -> Vec<u8> {
        let document = FolderStateDocument {
            received: self
                .mailbox
                .received
                .iter()
                .map(|(id, size)| (*id, *size))
                .collect(),
            tombstones: self
                .mailbox
                .tombstones
                .iter()
                .map(|(id, deleted_ms)| (*id, *deleted_ms))
                .collect(),
            flags: self
                .flags
                .registers
                .iter()
                .map(|((id, flag), register)| (*id, flag.clone(), register.clone()))
                .collect(),
            uids: self.uids.claims.iter().copied().collect(),
        };
        serde_json::to_vec(&document).expect("folder states serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<FolderState, DecodeError> {
        if bytes.len() > FOLDER_STATE_BYTES_MAX {
            return Err(DecodeError::TooLarge(FOLDER_STATE_BYTES_MAX));
        }
        let document: FolderStateDocument = serde_json::from_slice(bytes)
            .map_err(|error| DecodeError::Malformed(error.to_string()))?;
        let mut state = FolderState::default();
        state.mailbox.received.extend(document.received);
        state.mailbox.tombstones.extend(document.tombstones);
        for (id, flag, register) in document.flags {
            if FlagName::parse(flag.as_str()).as_ref() != Ok(&flag) {
                return Err(DecodeError::Invalid("a flag name not in its normal form"));
            }
            state.flags.registers.insert((id, flag), register);
        }
        for claim in document.uids {
            if claim.uid == 0 {
                return Err(DecodeError::Invalid("a UID of zero"));
            }
            state.uids.claims.insert(claim);
        }
        Ok(state)
    }
}

impl Folders {
    pub fn encode(&self) -> Vec<u8> {
        let records: Vec<(&FolderId, &FolderRecord)> = self.records.iter().collect();
        serde_json::to_vec(&records).expect("folder records serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Folders, DecodeError> {
        if bytes.len() > FOLDERS_BYTES_MAX {
            return Err(DecodeError::TooLarge(FOLDERS_BYTES_MAX));
        }
        let records: Vec<(FolderId, FolderRecord)> = serde_json::from_slice(bytes)
            .map_err(|error| DecodeError::Malformed(error.to_string()))?;
        if records.len() > FOLDER_RECORDS_MAX {
            return Err(DecodeError::Invalid("too many folder records"));
        }
        let mut folders = Folders::default();
        for (id, record) in records {
            if id == FolderId::INBOX {
                return Err(DecodeError::Invalid("a stored record for INBOX"));
            }
            if record.name.value.is_empty() || record.name.value.len() > FOLDER_NAME_BYTES_MAX {
                return Err(DecodeError::Invalid("a folder name out of bounds"));
            }
            folders.merge(&Folders {
                records: [(id, record)].into(),
            });
        }
        Ok(folders)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;

    fn version(wall_ms: u64) -> Version {
        Version {
            wall_ms,
            counter: 0,
            node: 1,
        }
    }

    #[test]
    fn states_and_folders_survive_encoding() {
        let mut state = FolderState::default();
        let id = MessageId::from_u128(7 << 80 | 3);
        state.mailbox.received.insert(id, 42);
        state.mailbox.tombstones.insert(MessageId::from_u128(9), 5);
        let flagged = FlagName::parse("$Important").unwrap();
        let delta = state.flags.write(id, &[flagged], true, version(3)).unwrap();
        state.flags.merge(&delta);
        state.uids.claims.extend(state.claims_to_write().unwrap());
        assert_eq!(FolderState::decode(&state.encode()), Ok(state.clone()));
        assert!(!state.is_empty() && FolderState::default().is_empty());

        let folders = Folders::default()
            .create("Work", FolderId(5), version(1_000))
            .unwrap();
        assert_eq!(Folders::decode(&folders.encode()), Ok(folders));
    }

    #[test]
    fn peer_data_is_checked() {
        let zero_uid = br#"{"received":[],"tombstones":[],"flags":[],"uids":[{"uid":0,"message":"00000000000000000000000000000001","generation":0}]}"#;
        assert_eq!(
            FolderState::decode(zero_uid),
            Err(DecodeError::Invalid("a UID of zero"))
        );
        let odd_flag = br#"{"received":[],"tombstones":[],"flags":[["00000000000000000000000000000001","$JUNK",{"version":{"wall_ms":1,"counter":0,"node":1},"value":true}]],"uids":[]}"#;
        assert_eq!(
            FolderState::decode(odd_flag),
            Err(DecodeError::Invalid("a flag name not in its normal form"))
        );
        assert!(matches!(
            FolderState::decode(b"[1,2"),
            Err(DecodeError::Malformed(_))
        ));
        let huge = vec![b' '; FOLDER_STATE_BYTES_MAX + 1];
        assert_eq!(
            FolderState::decode(&huge),
            Err(DecodeError::TooLarge(FOLDER_STATE_BYTES_MAX))
        );
        let inbox = br#"[[0,{"created":{"wall_ms":1,"counter":0,"node":1},"uid_validity":1,"name":{"version":{"wall_ms":1,"counter":0,"node":1},"value":"x"},"subscribed":{"version":{"wall_ms":1,"counter":0,"node":1},"value":true},"deleted":null}]]"#;
        assert_eq!(
            Folders::decode(inbox),
            Err(DecodeError::Invalid("a stored record for INBOX"))
        );
    }
}
