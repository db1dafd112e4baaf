//! The mail model of chordmail: what is stored, and how two copies of it merge.
//!
//! Every type here is plain data designed for replication from day one (docs/DESIGN.md §4):
//! - [`Message`] is immutable and named by a unique [`MessageId`] (its POP3 UIDL);
//! - [`Mailbox`] is the set of message ids received minus a set of tombstones, and
//!   [`Mailbox::merge`] is set union on both, so replicas reconcile without conflicts;
//! - [`Account`] is a last-writer-wins register ordered by [`Version`], a hybrid
//!   logical clock reading tagged with the writing node's id;
//! - [`Outbound`] is one entry of the outbound queue (mail for other domains),
//!   merged per recipient outcome, attempt and schedule.
//!
//! This crate deliberately knows nothing of storage, the ring or any wire protocol;
//! it never reads the clock itself ([`HybridClock::tick`] is given the wall time).

pub mod account;
pub mod clock;
pub mod encoding;
pub mod flags;
pub mod folder_state;
pub mod folders;
pub mod lww;
pub mod mailbox;
pub mod message;
pub mod outbound;
#[cfg(test)]
mod testing;
pub mod uids;

pub use account::{Account, HashError, PasswordError, check_password_hash};
pub use clock::{HybridClock, Version};
pub use encoding::DecodeError;
pub use flags::{FlagError, FlagName, Flags};
pub use folder_state::{FolderCounts, FolderState, NumberedMessage};
pub use folders::{FolderError, FolderId, FolderRecord, FolderView, Folders, SpecialUse};
pub use lww::Lww;
pub use mailbox::Mailbox;
pub use message::{Message, MessageId, MessageIdError};
pub use outbound::{Attempt, Outbound, Outcome};
pub use uids::{Resolved, UidClaim, UidError, UidMap};
