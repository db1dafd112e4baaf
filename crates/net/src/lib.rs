//! Node-to-node traffic of chordmail over gRPC (tonic), and the driver that runs the
//! sans-IO ring of `cm-ring` on it.
//!
//! - [`pb`], [`replica_pb`]: the generated protocols (`proto/ring.proto`,
//!   `proto/replica.proto`); the replica service itself is implemented in `cm-repl`.
//! - [`Peers`]: one lazily connected, reused channel per peer address; every call has
//!   a deadline, and a call that misses it is [`cm_ring::Unreachable`].
//! - [`ClusterTls`]: mutual TLS on the ring port with the cluster's certificates.
//! - [`RingDriver`] / [`RingHandle`]: joins or starts a ring, serves the ring RPCs,
//!   runs the periodic maintenance (stabilize, fix_fingers, fix_successors,
//!   check_predecessor, probing remembered peers) and answers lookups.
//!
//! The ring logic itself lives in `cm-ring` and does no I/O; this crate only moves
//! its questions and answers over the network. It knows nothing of mail.

pub mod pb {
    tonic::include_proto!("chordmail.ring.v1");
}

/// The replication protocol (`proto/replica.proto`); served by `cm-repl`.
pub mod replica_pb {
    tonic::include_proto!("chordmail.replica.v1");
}

mod convert;
mod driver;
mod peers;
mod server;
pub mod tls;

pub use driver::{RingDriver, RingHandle, RingOptions, StartError, Timing};
pub use peers::{MESSAGE_BYTES_MAX_ON_WIRE, Peers};
pub use tls::{ClusterTls, ClusterTlsError};
