//! The selected folder as one session sees it: messages in UID order, their
//! sequence numbers, and the untagged updates that keep a client in step.
//!
//! Sequence numbers are positions in [`Selected::messages`], so they change only
//! when this session reports an expunge (RFC 9051 §2.3.1.2). A snapshot from the
//! store is merged in by [`Selected::update`], which writes `EXISTS`, `EXPUNGE` and
//! flag `FETCH` responses; expunges wait while the rules of RFC 9051 §7.5.1 forbid
//! them (during FETCH, STORE and SEARCH by sequence number), and the messages stay
//! in view until a command that may shrink the view comes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::limits::IMAP_SELECTED_MESSAGES_MAX;
use crate::response::push_untagged;

/// One message of a folder as the store shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<Id> {
    pub uid: u32,
    pub id: Id,
    /// Flag names as stored (`\Seen`, keywords); `\Recent` never appears.
    pub flags: Vec<String>,
    /// Exact octets of the message.
    pub size: u64,
    /// When the message arrived, in seconds since the Unix epoch.
    pub internal_date_s: i64,
}

/// A folder's state as the store shows it when selected or polled. The shell gets
/// it from the folder's mailbox, flags and UID map after numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot<Id> {
    pub uid_validity: u32,
    /// UIDNEXT: above every UID ever claimed in the folder.
    pub uid_next: u32,
    /// The visible messages, any order; the session sorts them by UID.
    pub messages: Vec<Entry<Id>>,
    /// Keywords in use in the folder, for the FLAGS response.
    pub keywords: Vec<String>,
}

/// The selected folder.
#[derive(Debug)]
pub struct Selected<Id> {
    pub folder: String,
    pub read_only: bool,
    pub uid_validity: u32,
    pub uid_next: u32,
    /// In UID order; the sequence number of `messages[idx]` is `idx + 1`.
    pub messages: Vec<Entry<Id>>,
    /// UIDs the store no longer shows, kept in view until an expunge may be sent.
    pub vanished: Vec<u32>,
}

impl<Id: Clone + PartialEq> Selected<Id> {
    pub fn new(folder: String, read_only: bool, snapshot: Snapshot<Id>) -> Selected<Id> {
        let mut messages = snapshot.messages;
        messages.sort_by_key(|entry| entry.uid);
        messages.dedup_by_key(|entry| entry.uid);
        messages.truncate(IMAP_SELECTED_MESSAGES_MAX);
        let uid_next = snapshot.uid_next.max(
            messages
                .last()
                .map_or(1, |entry| entry.uid.saturating_add(1)),
        );
        Selected {
            folder,
            read_only,
            uid_validity: snapshot.uid_validity,
            uid_next,
            messages,
            vanished: Vec::new(),
        }
    }

    /// The index of the message with `uid`, by binary search (`messages` is in UID
    /// order).
    pub fn index_of(&self, uid: u32) -> Option<usize> {
        self.messages
            .binary_search_by_key(&uid, |entry| entry.uid)
            .ok()
    }

    pub fn largest_uid(&self) -> u32 {
        self.messages.last().map_or(0, |entry| entry.uid)
    }

    pub fn n_exists(&self) -> usize {
        self.messages.len()
    }

    /// Merges what the store shows now and writes the updates a client may get at
    /// this point: flag changes and new messages always, expunges only when
    /// `expunge_allowed`.
    pub fn update(&mut self, snapshot: Snapshot<Id>, expunge_allowed: bool, out: &mut Vec<u8>) {
        let mut fresh: BTreeMap<u32, Entry<Id>> = snapshot
            .messages
            .into_iter()
            .map(|entry| (entry.uid, entry))
            .collect();
        for (msg_idx, entry) in self.messages.iter_mut().enumerate() {
            match fresh.remove(&entry.uid) {
                Some(now) => {
                    if now.flags != entry.flags {
                        entry.flags = now.flags;
                        let mut line = format!("{} FETCH (", msg_idx + 1);
                        write_flags(&mut line, &entry.flags);
                        line.push(')');
                        push_untagged(out, &line);
                    }
                }
                None => {
                    if !self.vanished.contains(&entry.uid) {
                        self.vanished.push(entry.uid);
                    }
                }
            }
        }
        if expunge_allowed {
            self.flush_expunges(out);
        }
        // New messages come with UIDs above every UID shown (the UID map numbers
        // above the highest ever claimed). One that does not would break the
        // ascending order a client relies on, so it waits for a new SELECT.
        let largest_uid = self.largest_uid();
        let n_before = self.messages.len();
        for (uid, entry) in fresh {
            if uid > largest_uid && self.messages.len() < IMAP_SELECTED_MESSAGES_MAX {
                self.messages.push(entry);
            }
        }
        if self.messages.len() != n_before {
            push_untagged(out, &format!("{} EXISTS", self.messages.len()));
        }
        self.uid_next = self
            .uid_next
            .max(snapshot.uid_next)
            .max(self.largest_uid().saturating_add(1));
    }

    /// Removes `uids` from view, writing one `EXPUNGE` per message, highest
    /// sequence number first so that no number shifts under the client.
    pub fn expunge(&mut self, uids: &[u32], out: &mut Vec<u8>) {
        let uids: std::collections::BTreeSet<u32> = uids.iter().copied().collect();
        let mut msg_idxs: Vec<usize> = uids.iter().filter_map(|uid| self.index_of(*uid)).collect();
        msg_idxs.sort_unstable();
        for msg_idx in msg_idxs.into_iter().rev() {
            push_untagged(out, &format!("{} EXPUNGE", msg_idx + 1));
        }
        self.messages.retain(|entry| !uids.contains(&entry.uid));
        self.vanished.retain(|uid| !uids.contains(uid));
    }

    /// Reports the messages the store dropped while expunges had to wait.
    pub fn flush_expunges(&mut self, out: &mut Vec<u8>) {
        let vanished = std::mem::take(&mut self.vanished);
        self.expunge(&vanished, out);
    }

    pub fn first_unseen(&self) -> Option<usize> {
        self.messages
            .iter()
            .position(|entry| !has_flag(&entry.flags, "\\Seen"))
            .map(|msg_idx| msg_idx + 1)
    }
}

/// Flags compare case-insensitively (RFC 9051 §2.3.2).
pub fn has_flag(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|held| held.eq_ignore_ascii_case(flag))
}

/// Appends `FLAGS (...)`.
pub fn write_flags(line: &mut String, flags: &[String]) {
    line.push_str("FLAGS (");
    for (flag_idx, flag) in flags.iter().enumerate() {
        if flag_idx > 0 {
            line.push(' ');
        }
        let _ = write!(line, "{flag}");
    }
    line.push(')');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: u32, flags: &[&str]) -> Entry<u32> {
        Entry {
            uid,
            id: uid * 100,
            flags: flags.iter().map(|flag| (*flag).to_owned()).collect(),
            size: 10,
            internal_date_s: 0,
        }
    }

    fn snapshot(messages: Vec<Entry<u32>>) -> Snapshot<u32> {
        Snapshot {
            uid_validity: 7,
            uid_next: 10,
            messages,
            keywords: Vec::new(),
        }
    }

    #[test]
    fn updates_respect_when_expunges_may_be_sent() {
        let mut selected = Selected::new(
            "INBOX".into(),
            false,
            snapshot(vec![entry(3, &[]), entry(1, &[]), entry(5, &[])]),
        );
        assert_eq!(
            selected.messages.iter().map(|e| e.uid).collect::<Vec<_>>(),
            [1, 3, 5]
        );
        let mut out = Vec::new();
        // UID 3 is gone, UID 5 got \Seen, UID 9 is new, UID 2 (below the largest
        // shown) is not taken.
        let now = snapshot(vec![
            entry(1, &[]),
            entry(2, &[]),
            entry(5, &["\\Seen"]),
            entry(9, &[]),
        ]);
        selected.update(now.clone(), false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* 3 FETCH (FLAGS (\\Seen))\r\n* 4 EXISTS\r\n"
        );
        let mut out = Vec::new();
        selected.update(now, true, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "* 2 EXPUNGE\r\n");
        assert_eq!(
            selected.messages.iter().map(|e| e.uid).collect::<Vec<_>>(),
            [1, 5, 9]
        );
    }
}
