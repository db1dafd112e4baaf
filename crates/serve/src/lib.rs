//! What every client-facing shell of a chordmail node shares (SMTP, POP3, and IMAP
//! later): the accept loop and the stream that STARTTLS/STLS upgrades.
//!
//! This crate knows no protocol and no mail: a shell describes itself through the
//! [`Shell`] trait (its name, connection limit, refusal line, span, and how to serve
//! one stream) and [`serve`] does the rest. It deliberately has no error type of
//! its own: the accept loop logs and goes on, and [`UpgradableStream::start_tls`]
//! returns the handshake's `std::io::Error` for the shell to wrap.
//!
//! Reading order: [`serve`] and [`Shell`], [`ClientBudget`] (connections per client
//! address), then [`UpgradableStream`], then
//! [`auth_failure_delay`]. With the `test-support` feature, `testing` holds what
//! the shells' tests share.

mod accept;
mod budget;
mod stream;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use accept::{ACCEPT_ERROR_BACKOFF, Shell, serve};
pub use budget::{CONNECTIONS_PER_CLIENT_MAX_DEFAULT, ClientBudget, Network};
pub use stream::UpgradableStream;

use std::time::Duration;

/// A failed login is answered only after a delay that grows with each failure of
/// the session and stops growing after this many steps, so that guessing
/// passwords costs time while a typo costs little.
pub const AUTH_FAILURE_DELAY_STEPS_MAX: u32 = 10;

/// The delay before the answer to the `n_failures`-th failed login of a session
/// (counting from 1): `n_failures` steps of `step`, at most
/// [`AUTH_FAILURE_DELAY_STEPS_MAX`] of them.
pub fn auth_failure_delay(step: Duration, n_failures: u32) -> Duration {
    step * n_failures.min(AUTH_FAILURE_DELAY_STEPS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failure_delay_grows_then_stops() {
        let step = Duration::from_millis(100);
        let table = [(1, 100), (2, 200), (10, 1000), (11, 1000), (u32::MAX, 1000)];
        for (n_failures, delay_ms) in table {
            assert_eq!(
                auth_failure_delay(step, n_failures),
                Duration::from_millis(delay_ms),
                "{n_failures}"
            );
        }
    }
}
