//! The Chord ring of chordmail as a sans-IO state machine (draft doc, see below).

pub mod id;
pub mod lookup;
pub mod node;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use id::IdSpace;
pub use lookup::{LOOKUP_QUERIES_MAX, Lookup, LookupAction, LookupError, LookupResult, LookupStep};
pub use node::{
    ConfigError, Effect, Finger, FingerRequest, JoinError, LeaveNotice, Node, NodeRef,
    REMEMBERED_PEERS_MAX, RemoteState, RingConfig, RingView, SUCCESSOR_LIST_LEN_DEFAULT,
    SUCCESSOR_LIST_LEN_MAX, Unreachable, choose_join_successor,
};
