//! Mail to other domains: everything of the outbound queue that talks to the
//! outside world (docs/DESIGN.md §12).
//!
//! The queue's entries are replicated ring data kept by `cm-repl`
//! (`Mail::enqueue`, `Mail::outbound_due`); this crate stores nothing itself. Its
//! [`queue`] worker takes the entries this node coordinates and calls the rest of
//! the crate to decide when to try, to try, and to write a bounce; only that worker
//! knows the ring (through `cm_repl::Mail`), the rest depends on `cm-types` only.
//!
//! In reading order:
//! - [`config`]: [`RelayConfig`], the `[relay]` table, with the retry policy
//!   ([`RelayConfig::retry_delay`], [`RelayConfig::expired`]);
//! - [`mod@route`]: [`route()`], the hosts to try for a domain (routes, smarthost, DNS
//!   MX), behind the [`Resolver`] trait with [`DnsResolver`] as the real one;
//! - [`deliver`]: [`deliver_batch`], several messages for one domain over one
//!   connection, with a [`RecipientOutcome`] per recipient;
//! - `client`: the small SMTP client under it (bounded replies, timeouts,
//!   opportunistic STARTTLS, dot-stuffing);
//! - [`mod@dsn`]: [`dsn()`], RFC 3464 bounces, and [`should_bounce`], which keeps
//!   bounces from looping;
//! - [`queue`]: the worker that drives the replicated queue through the above;
//! - [`limits`]: every bound, as named constants.

mod client;
pub mod config;
pub mod deliver;
pub mod dsn;
mod error;
pub mod limits;
pub mod queue;
pub mod route;

pub use config::{HostPort, RelayConfig};
pub use deliver::{Envelope, OutboundMessage, RecipientOutcome, deliver_batch};
pub use dsn::{DsnFailure, DsnReport, dsn, is_bounce, should_bounce};
pub use error::RelayError;
pub use route::{DnsFailure, DnsResolver, MxRecord, NoResolver, Resolver, SMTP_PORT, route};
