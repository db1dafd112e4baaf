//! The bounds of the IMAP shell in one place: the protocol's own bounds are
//! `cm_imap_proto::limits`; the ones here are the shell's, and [`ImapLimits`] holds
//! those configuration may lower (never raise).

use std::time::Duration;

pub use cm_imap_proto::limits::IMAP_IDLE_TIMEOUT;
pub use cm_types::limits::CONNECTIONS_MAX;

/// Bytes read from the peer at once.
pub const IMAP_READ_CHUNK_BYTES: usize = 64 * 1024;

/// Replies buffered before they are written out (a FETCH of many messages is
/// written as it goes, not held whole).
pub const IMAP_WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// The fallback poll of an IDLE session: how long a change made where this node
/// hears nothing of it (a delivery to a replica set this node is not in) may take
/// to reach the client at most.
pub const IMAP_IDLE_POLL_INTERVAL_MAX: Duration = Duration::from_secs(2);

/// The fastest fallback poll configuration may ask for; each poll is a quorum read.
pub const IMAP_IDLE_POLL_INTERVAL_MIN: Duration = Duration::from_millis(50);

const _: () =
    assert!(IMAP_IDLE_POLL_INTERVAL_MIN.as_millis() < IMAP_IDLE_POLL_INTERVAL_MAX.as_millis());
const _: () = assert!(IMAP_WRITE_BUFFER_BYTES >= IMAP_READ_CHUNK_BYTES);

/// The bounds of a session that configuration may lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImapLimits {
    /// RFC 9051 §5.4 autologout (at least 30 minutes unless lowered for tests).
    /// Also bounds a TLS handshake and a write to a peer that does not read.
    pub idle_timeout: Duration,
    pub connections_max: usize,
    /// IDLE's fallback poll.
    pub idle_poll_interval: Duration,
}

impl Default for ImapLimits {
    fn default() -> ImapLimits {
        ImapLimits {
            idle_timeout: IMAP_IDLE_TIMEOUT,
            connections_max: CONNECTIONS_MAX,
            idle_poll_interval: IMAP_IDLE_POLL_INTERVAL_MAX,
        }
    }
}

impl ImapLimits {
    /// Configuration may lower a limit but never raise it past the constant.
    pub fn clamped(self) -> ImapLimits {
        ImapLimits {
            idle_timeout: self.idle_timeout.min(IMAP_IDLE_TIMEOUT),
            connections_max: self.connections_max.clamp(1, CONNECTIONS_MAX),
            idle_poll_interval: self
                .idle_poll_interval
                .clamp(IMAP_IDLE_POLL_INTERVAL_MIN, IMAP_IDLE_POLL_INTERVAL_MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_clamped_to_the_constants() {
        let raised = ImapLimits {
            idle_timeout: IMAP_IDLE_TIMEOUT * 2,
            connections_max: CONNECTIONS_MAX + 1,
            idle_poll_interval: Duration::from_secs(60),
        };
        assert_eq!(raised.clamped(), ImapLimits::default());
        let lowered = ImapLimits {
            idle_timeout: Duration::from_secs(1),
            connections_max: 0,
            idle_poll_interval: Duration::ZERO,
        };
        assert_eq!(
            lowered.clamped(),
            ImapLimits {
                idle_timeout: Duration::from_secs(1),
                connections_max: 1,
                idle_poll_interval: IMAP_IDLE_POLL_INTERVAL_MIN,
            }
        );
    }
}
