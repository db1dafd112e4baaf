//! An account's IMAP folders as mergeable data.
//!
//! Every folder is a record named by a [`FolderId`] drawn once at creation, never by
//! its name, so that a rename is a last-writer-wins write on one record and two
//! replicas that created, renamed and deleted folders while apart merge without
//! conflicts. A deletion is a tombstone that beats the record for ever, like a
//! message's. The messages of a folder are a [`crate::Mailbox`] of their own, kept
//! under the folder's id by the storage layer; INBOX's is the POP3 maildrop.
//!
//! INBOX always exists: it is not stored, [`Folders::view`] adds it, and it can be
//! neither deleted nor renamed here.

use std::collections::BTreeMap;
use std::fmt;

use crate::{Lww, Version};

/// The longest folder name accepted, in bytes of its UTF-8 form.
pub const FOLDER_NAME_BYTES_MAX: usize = 255;

/// Folders one account may hold (INBOX not counted); CREATE beyond it is refused.
pub const FOLDERS_PER_ACCOUNT_MAX: usize = 1000;

/// The hierarchy delimiter LIST reports (RFC 9051 §6.3.9).
pub const FOLDER_DELIMITER: char = '/';

/// INBOX's UIDVALIDITY. It is never recreated, so one constant serves every replica.
pub const INBOX_UID_VALIDITY: u32 = 1;

/// The stable name of a folder record. INBOX is id 0; created folders draw a random
/// id (the caller's randomness: this crate reads none).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct FolderId(pub u128);

impl FolderId {
    pub const INBOX: FolderId = FolderId(0);
}

impl fmt::Debug for FolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FolderId({:032x})", self.0)
    }
}

/// RFC 6154 special-use attributes, given to the folders whose names clients look
/// for so that they find them without configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecialUse {
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
}

impl SpecialUse {
    /// The folders every new account's clients expect, in the order LIST shows them.
    pub const DEFAULT_FOLDERS: [(&str, SpecialUse); 5] = [
        ("Archive", SpecialUse::Archive),
        ("Drafts", SpecialUse::Drafts),
        ("Junk", SpecialUse::Junk),
        ("Sent", SpecialUse::Sent),
        ("Trash", SpecialUse::Trash),
    ];

    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
        }
    }

    /// The special use of a top-level folder by its (case-insensitive) name.
    pub fn of_name(name: &str) -> Option<SpecialUse> {
        let aliases: [(&str, SpecialUse); 7] = [
            ("Sent", SpecialUse::Sent),
            ("Sent Messages", SpecialUse::Sent),
            ("Drafts", SpecialUse::Drafts),
            ("Trash", SpecialUse::Trash),
            ("Deleted Messages", SpecialUse::Trash),
            ("Junk", SpecialUse::Junk),
            ("Archive", SpecialUse::Archive),
        ];
        aliases
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(name))
            .map(|(_, special_use)| *special_use)
    }
}

/// One created folder. `created` and `uid_validity` are fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FolderRecord {
    pub created: Version,
    pub uid_validity: u32,
    pub name: Lww<String>,
    pub subscribed: Lww<bool>,
    /// The deletion's version; once set, the record is gone for ever.
    pub deleted: Option<Version>,
}

impl FolderRecord {
    fn merge(&mut self, other: &FolderRecord) {
        // Creation data never differ between honest replicas; taking the smaller
        // keeps a forged difference from making the merge order-dependent.
        if (other.created, other.uid_validity) < (self.created, self.uid_validity) {
            self.created = other.created;
            self.uid_validity = other.uid_validity;
        }
        self.name.merge(&other.name);
        self.subscribed.merge(&other.subscribed);
        self.deleted = self.deleted.max(other.deleted);
    }
}

/// A folder as a session sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderView {
    pub id: FolderId,
    pub name: String,
    pub uid_validity: u32,
    pub subscribed: bool,
    pub special_use: Option<SpecialUse>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FolderError {
    #[error("invalid folder name")]
    InvalidName,
    #[error("folder already exists")]
    Exists,
    #[error("no such folder")]
    NotFound,
    #[error("INBOX can be neither deleted nor renamed")]
    Inbox,
    #[error("too many folders")]
    TooMany,
}

/// The folder records of one account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folders {
    pub records: BTreeMap<FolderId, FolderRecord>,
}

impl Folders {
    /// Folds `other` into `self`, record by record.
    pub fn merge(&mut self, other: &Folders) {
        for (id, record) in &other.records {
            match self.records.get_mut(id) {
                Some(ours) => ours.merge(record),
                None => {
                    self.records.insert(*id, record.clone());
                }
            }
        }
    }

    /// The live folders, INBOX first and then by name.
    ///
    /// Two replicas may have created (or renamed to) the same name while apart. The
    /// record created first keeps the name and the others show with their id's
    /// first hex digits appended, so no folder (and no message) becomes unreachable
    /// and every replica shows the same names.
    pub fn view(&self) -> Vec<FolderView> {
        let mut live: Vec<(&FolderId, &FolderRecord)> = self
            .records
            .iter()
            .filter(|(id, record)| record.deleted.is_none() && **id != FolderId::INBOX)
            .collect();
        live.sort_by(|(a_id, a), (b_id, b)| {
            (&a.name.value, a.created, a_id).cmp(&(&b.name.value, b.created, b_id))
        });
        let mut views = vec![FolderView {
            id: FolderId::INBOX,
            name: "INBOX".to_owned(),
            uid_validity: INBOX_UID_VALIDITY,
            subscribed: true,
            special_use: None,
        }];
        let mut taken: std::collections::BTreeSet<String> =
            std::iter::once("INBOX".to_owned()).collect();
        for (id, record) in live {
            let mut name = record.name.value.clone();
            if taken.contains(&name) || name.eq_ignore_ascii_case("INBOX") {
                name = unique_name(&record.name.value, *id, &taken);
            }
            taken.insert(name.clone());
            views.push(FolderView {
                id: *id,
                special_use: SpecialUse::of_name(&name),
                name,
                uid_validity: record.uid_validity,
                subscribed: record.subscribed.value,
            });
        }
        views
    }

    /// The live folder called `name` (INBOX in any case, RFC 9051 §5.1).
    pub fn find(&self, name: &str) -> Option<FolderView> {
        let is_inbox = name.eq_ignore_ascii_case("INBOX");
        self.view().into_iter().find(|view| {
            if is_inbox {
                view.id == FolderId::INBOX
            } else {
                view.name == name
            }
        })
    }

    /// The delta that creates folder `name` with the fresh random `id`. Its
    /// UIDVALIDITY is the creation second, or one more than any folder ever had, so
    /// that a folder deleted and created again under one name never shows a client
    /// the same UIDVALIDITY twice.
    pub fn create(
        &self,
        name: &str,
        id: FolderId,
        version: Version,
    ) -> Result<Folders, FolderError> {
        check_name(name)?;
        if self.find(name).is_some() {
            return Err(FolderError::Exists);
        }
        if id == FolderId::INBOX || self.records.contains_key(&id) {
            return Err(FolderError::Exists);
        }
        let n_live = self
            .records
            .values()
            .filter(|record| record.deleted.is_none())
            .count();
        if n_live >= FOLDERS_PER_ACCOUNT_MAX
            || self.records.len() >= crate::encoding::FOLDER_RECORDS_MAX
        {
            return Err(FolderError::TooMany);
        }
        let highest = self
            .records
            .values()
            .map(|record| record.uid_validity)
            .max()
            .unwrap_or(INBOX_UID_VALIDITY);
        let wall_s = u32::try_from(version.wall_ms / 1000).unwrap_or(u32::MAX);
        let uid_validity = wall_s.max(highest.saturating_add(1));
        let record = FolderRecord {
            created: version,
            uid_validity,
            name: Lww::new(version, name.to_owned()),
            subscribed: Lww::new(version, true),
            deleted: None,
        };
        Ok(Folders {
            records: BTreeMap::from([(id, record)]),
        })
    }

    pub fn delete(&self, name: &str, version: Version) -> Result<Folders, FolderError> {
        let (id, mut record) = self.live_record(name)?;
        record.deleted = Some(version);
        Ok(Folders {
            records: BTreeMap::from([(id, record)]),
        })
    }

    /// The delta that renames `from` to `to`, and its inferiors with it (RFC 9051
    /// §6.3.6: renaming `a` renames `a/b` to `to/b`).
    pub fn rename(&self, from: &str, to: &str, version: Version) -> Result<Folders, FolderError> {
        check_name(to)?;
        let (id, mut record) = self.live_record(from)?;
        let from_prefix = format!("{}{FOLDER_DELIMITER}", record.name.value);
        if to == record.name.value || to.starts_with(&from_prefix) {
            return Err(FolderError::InvalidName);
        }
        let mut delta = Folders::default();
        for view in self.view() {
            let Some(suffix) = view.name.strip_prefix(&from_prefix) else {
                continue;
            };
            let new_name = format!("{to}{FOLDER_DELIMITER}{suffix}");
            check_name(&new_name)?;
            let mut inferior = self.records[&view.id].clone();
            inferior.name = Lww::new(version, new_name);
            delta.records.insert(view.id, inferior);
        }
        record.name = Lww::new(version, to.to_owned());
        delta.records.insert(id, record);
        let renamed: std::collections::BTreeSet<&String> = delta
            .records
            .values()
            .map(|record| &record.name.value)
            .collect();
        let clash = self
            .view()
            .iter()
            .any(|view| !delta.records.contains_key(&view.id) && renamed.contains(&view.name));
        if clash {
            return Err(FolderError::Exists);
        }
        Ok(delta)
    }

    pub fn subscribe(
        &self,
        name: &str,
        subscribed: bool,
        version: Version,
    ) -> Result<Folders, FolderError> {
        let (id, mut record) = self.live_record(name)?;
        record.subscribed = Lww::new(version, subscribed);
        Ok(Folders {
            records: BTreeMap::from([(id, record)]),
        })
    }

    /// The stored record behind a name shown by [`Folders::view`], INBOX excluded.
    fn live_record(&self, name: &str) -> Result<(FolderId, FolderRecord), FolderError> {
        let view = self.find(name).ok_or(FolderError::NotFound)?;
        if view.id == FolderId::INBOX {
            return Err(FolderError::Inbox);
        }
        let record = self
            .records
            .get(&view.id)
            .expect("a viewed folder has a record");
        Ok((view.id, record.clone()))
    }
}

/// The name shown for a record whose name another record holds: the name with the
/// id's first hex digits, or the whole id, or failing both a counter (the search is
/// bounded by the number of names already taken).
fn unique_name(name: &str, id: FolderId, taken: &std::collections::BTreeSet<String>) -> String {
    let short = format!("{name} ({:08x})", (id.0 >> 96) as u32);
    let full = format!("{name} ({:032x})", id.0);
    [short, full.clone()]
        .into_iter()
        .chain((1..=taken.len()).map(|n_tries| format!("{full}~{n_tries}")))
        .find(|candidate| !taken.contains(candidate))
        .expect("more candidates than names taken")
}

/// A name is non-empty UTF-8 without control characters, not INBOX, with no empty
/// hierarchy level and no wildcard (RFC 9051 §5.1: `%` and `*` mean LIST patterns).
fn check_name(name: &str) -> Result<(), FolderError> {
    let valid = !name.is_empty()
        && name.len() <= FOLDER_NAME_BYTES_MAX
        && !name.eq_ignore_ascii_case("INBOX")
        && !name.chars().any(|c| c.is_control() || c == '%' || c == '*')
        && name.split(FOLDER_DELIMITER).all(|level| !level.is_empty());
    if valid {
        Ok(())
    } else {
        Err(FolderError::InvalidName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_merge_laws, merged, version};
    use proptest::prelude::*;

    fn apply(folders: &mut Folders, write: impl FnOnce(&Folders) -> Result<Folders, FolderError>) {
        let delta = write(folders).unwrap();
        folders.merge(&delta);
    }

    #[test]
    fn inbox_is_always_there_and_cannot_go() {
        let folders = Folders::default();
        let inbox = folders.find("inbox").unwrap();
        assert_eq!(
            (inbox.id, inbox.uid_validity),
            (FolderId::INBOX, INBOX_UID_VALIDITY)
        );
        assert_eq!(
            folders.delete("INBOX", version(1, 1)),
            Err(FolderError::Inbox)
        );
        assert_eq!(
            folders.rename("Inbox", "x", version(1, 1)),
            Err(FolderError::Inbox)
        );
        assert_eq!(
            folders.create("INBOX", FolderId(5), version(1, 1)),
            Err(FolderError::InvalidName)
        );
    }

    #[test]
    fn create_rename_delete_and_create_again() {
        let mut folders = Folders::default();
        apply(&mut folders, |folders| {
            folders.create("Work", FolderId(7), version(5_000, 1))
        });
        let work = folders.find("Work").unwrap();
        assert_eq!(work.uid_validity, 5);
        assert_eq!(
            folders.create("Work", FolderId(8), version(6_000, 1)),
            Err(FolderError::Exists)
        );
        apply(&mut folders, |folders| {
            folders.rename("Work", "Jobs", version(7_000, 1))
        });
        assert!(folders.find("Work").is_none());
        assert_eq!(folders.find("Jobs").unwrap().id, FolderId(7));
        apply(&mut folders, |folders| {
            folders.delete("Jobs", version(8_000, 1))
        });
        assert!(folders.find("Jobs").is_none());
        // The same second again: UIDVALIDITY still moves on.
        apply(&mut folders, |folders| {
            folders.create("Jobs", FolderId(9), version(5_000, 2))
        });
        assert_eq!(folders.find("Jobs").unwrap().uid_validity, 6);
        for bad in ["", "a//b", "/a", "a*", "x\u{7}"] {
            assert_eq!(
                folders.create(bad, FolderId(10), version(1, 1)),
                Err(FolderError::InvalidName),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rename_takes_the_inferiors_along() {
        let mut folders = Folders::default();
        apply(&mut folders, |folders| {
            folders.create("Work", FolderId(1), version(1_000, 1))
        });
        apply(&mut folders, |folders| {
            folders.create("Work/2026", FolderId(2), version(1_000, 1))
        });
        apply(&mut folders, |folders| {
            folders.create("Workshop", FolderId(3), version(1_000, 1))
        });
        apply(&mut folders, |folders| {
            folders.create("Old/2026", FolderId(4), version(1_000, 1))
        });
        assert_eq!(
            folders.rename("Work", "Work/x", version(2_000, 1)),
            Err(FolderError::InvalidName)
        );
        // "Old/2026" exists, so moving "Work/2026" there must fail.
        assert_eq!(
            folders.rename("Work", "Old", version(2_000, 1)),
            Err(FolderError::Exists)
        );
        apply(&mut folders, |folders| {
            folders.rename("Work", "Jobs", version(2_000, 1))
        });
        let names: Vec<String> = folders.view().into_iter().map(|view| view.name).collect();
        assert_eq!(
            names,
            ["INBOX", "Jobs", "Jobs/2026", "Old/2026", "Workshop"]
        );
    }

    #[test]
    fn concurrent_creations_of_one_name_both_stay_reachable() {
        let empty = Folders::default();
        let mut a = empty.clone();
        apply(&mut a, |empty| {
            empty.create("Trips", FolderId(1 << 100), version(1_000, 1))
        });
        let mut b = empty.clone();
        apply(&mut b, |empty| {
            empty.create("Trips", FolderId(2 << 100), version(2_000, 2))
        });
        a.merge(&b);
        let names: Vec<String> = a.view().into_iter().map(|view| view.name).collect();
        assert_eq!(names, ["INBOX", "Trips", "Trips (00000020)"]);
        assert_eq!(SpecialUse::of_name("sent"), Some(SpecialUse::Sent));
    }

    fn folders() -> impl Strategy<Value = Folders> {
        let record = (
            0u64..3,
            0u32..3,
            (0u64..4, 0u64..2, prop_oneof![Just("a"), Just("b")]),
            (0u64..4, any::<bool>()),
            proptest::option::of(0u64..4),
        )
            .prop_map(
                |(
                    created_ms,
                    uid_validity,
                    (name_ms, node, name),
                    (sub_ms, subscribed),
                    deleted,
                )| FolderRecord {
                    created: version(created_ms, 0),
                    uid_validity,
                    name: Lww::new(version(name_ms, node), name.to_owned()),
                    subscribed: Lww::new(version(sub_ms, node), subscribed),
                    deleted: deleted.map(|ms| version(ms, 1)),
                },
            );
        proptest::collection::btree_map((1u128..4).prop_map(FolderId), record, 0..4)
            .prop_map(|records| Folders { records })
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(a in folders(), b in folders(), c in folders()) {
            check_merge_laws(&a, &b, &c)?;
        }

        #[test]
        fn the_view_has_unique_names_and_a_deletion_wins(a in folders(), b in folders()) {
            let result = merged(&a, &b);
            let view = result.view();
            let names: std::collections::BTreeSet<&String> = view.iter().map(|v| &v.name).collect();
            prop_assert_eq!(names.len(), view.len());
            for (id, record) in a.records.iter().chain(&b.records) {
                if record.deleted.is_some() {
                    prop_assert!(view.iter().all(|v| v.id != *id));
                }
            }
        }
    }
}
