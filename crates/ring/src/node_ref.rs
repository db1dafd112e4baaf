//! How ring members name each other, and the one way a remote call fails; shared by
//! the node's maintenance ([`crate::node`]) and lookups ([`crate::lookup`]).

use cm_types::RingKey;
use serde::{Deserialize, Serialize};

/// A ring member as other members know it: its id and its ring address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeRef {
    pub id: RingKey,
    pub addr: String,
}

/// A remote call that got no answer within its deadline, or an error.
///
/// The ring does not distinguish a dead node from an unreachable one: either way the
/// node is routed around now and retried later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("node did not answer")]
pub struct Unreachable;
