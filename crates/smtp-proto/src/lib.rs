//! The SMTP protocol core of chordmail: bytes in, commands and replies out.
//!
//! This crate is sans-IO. It has no tokio, no sockets and no clock, so every rule
//! of the protocol is tested here with plain byte slices. The tokio shell
//! (`cm-smtp`) reads from the socket, feeds this crate and writes what it returns.
//! It deliberately knows nothing of accounts or storage either: where a decision
//! needs them, the [`Session`] asks the shell through a [`Step`] and is told the
//! verdict. What the core cannot know, the time and unique values, the shell
//! passes in ([`Arrival`]); with them the session writes the trace headers
//! (RFC 5321 §4.4) into the buffer the body is received into, and hands the
//! message over as one `Bytes` ([`Delivery`]).
//!
//! In reading order:
//! - [`limits`]: [`SmtpLimits`], the bounds of a session (config lowers, never raises);
//! - [`command`]: line framing with the 512-octet limit and the command grammar;
//! - [`data`]: the DATA receiver (dot-unstuffing, text-line and size limits);
//! - [`sasl`]: AUTH PLAIN and LOGIN decoding;
//! - [`session`]: the state machine, one enum variant per protocol state;
//! - [`reply`]: reply encoding, and every reply of the server in one catalogue;
//! - [`headers`]: `Received:`, `Return-Path:`, `Authentication-Results:` and
//!   `Message-ID:` construction, and the removal of forged `Authentication-Results:`.

pub mod command;
pub mod data;
mod error;
pub mod headers;
pub mod limits;
pub mod reply;
pub mod sasl;
pub mod session;

pub use command::{Command, CommandReader};
pub use data::DataReceiver;
pub use error::SmtpError;
pub use limits::SmtpLimits;
pub use reply::Reply;
pub use session::{
    Arrival, AuthVerdict, Delivery, DeliveryVerdict, InputMode, RecipientVerdict, SenderVerdict,
    Session, SessionConfig, Step,
};
