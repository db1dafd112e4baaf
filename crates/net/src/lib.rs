//! Node-to-node traffic of chordmail over gRPC (tonic), and the driver that runs the
//! sans-IO ring of `cm-ring` on it.
//!
//! - [`pb`]: the generated ring protocol (`proto/ring.proto`).
//! - [`Peers`]: one lazily connected, reused channel per peer address; every ring
//!   call has a deadline, and a call that misses it is [`cm_ring::Unreachable`].
//!   Other services (cm-repl's replication) run their own clients over
//!   [`Peers::channel`] and are served next to the ring's through the routes given to
//!   [`RingDriver::start`].
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

mod convert;
mod driver;
mod peers;
mod server;
mod shared;
pub mod tls;

pub use driver::{RingDriver, RingHandle, RingOptions, StartError, Timing};
pub use peers::Peers;
pub use tls::{ClusterTls, ClusterTlsError};
