//! The bounds of one SMTP session, as a struct that configuration may lower.

use std::time::Duration;

use cm_types::limits::{
    CONNECTIONS_MAX, MESSAGE_BYTES_MAX, SMTP_BAD_COMMANDS_MAX, SMTP_COMMAND_LINE_BYTES_MAX,
    SMTP_IDLE_TIMEOUT, SMTP_RECIPIENTS_MAX, SMTP_TEXT_LINE_BYTES_MAX,
};

/// RFC 4954 §4: an AUTH command or SASL response line may be up to 12288 octets,
/// because base64 credentials do not fit into the 512 octets of a command line.
pub const SMTP_AUTH_LINE_BYTES_MAX: usize = 12288;

/// Bytes the shell reads from the peer at a time. Lines and bodies are assembled
/// by the core under the limits above; this only bounds one read.
pub const SMTP_READ_CHUNK_BYTES: usize = 16 * 1024;

const _: () = assert!(SMTP_AUTH_LINE_BYTES_MAX > SMTP_COMMAND_LINE_BYTES_MAX);
const _: () = assert!(SMTP_TEXT_LINE_BYTES_MAX < MESSAGE_BYTES_MAX);

/// Every limit a session enforces. `Default` gives the constants of
/// `cm_types::limits`; [`SmtpLimits::clamped`] lowers a configured value to them, so a
/// configuration can tighten a limit but never loosen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpLimits {
    pub command_line_bytes_max: usize,
    pub text_line_bytes_max: usize,
    /// Advertised in the SIZE extension (RFC 1870).
    pub message_bytes_max: usize,
    pub recipients_max: usize,
    pub idle_timeout: Duration,
    pub connections_max: usize,
    pub bad_commands_max: u32,
}

impl Default for SmtpLimits {
    fn default() -> SmtpLimits {
        SmtpLimits {
            command_line_bytes_max: SMTP_COMMAND_LINE_BYTES_MAX,
            text_line_bytes_max: SMTP_TEXT_LINE_BYTES_MAX,
            message_bytes_max: MESSAGE_BYTES_MAX,
            recipients_max: SMTP_RECIPIENTS_MAX,
            idle_timeout: SMTP_IDLE_TIMEOUT,
            connections_max: CONNECTIONS_MAX,
            bad_commands_max: SMTP_BAD_COMMANDS_MAX,
        }
    }
}

impl SmtpLimits {
    /// These limits with every value lowered to at most its constant, and raised to
    /// a floor where zero would make the session unusable.
    pub fn clamped(&self) -> SmtpLimits {
        let ceiling = SmtpLimits::default();
        SmtpLimits {
            // A line must at least hold "QUIT\r\n".
            command_line_bytes_max: self
                .command_line_bytes_max
                .clamp(6, ceiling.command_line_bytes_max),
            text_line_bytes_max: self
                .text_line_bytes_max
                .clamp(3, ceiling.text_line_bytes_max),
            message_bytes_max: self.message_bytes_max.min(ceiling.message_bytes_max),
            recipients_max: self.recipients_max.clamp(1, ceiling.recipients_max),
            idle_timeout: self.idle_timeout.min(ceiling.idle_timeout),
            connections_max: self.connections_max.clamp(1, ceiling.connections_max),
            bad_commands_max: self.bad_commands_max.clamp(1, ceiling.bad_commands_max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lowers_but_never_raises() {
        let raised = SmtpLimits {
            command_line_bytes_max: 1 << 20,
            message_bytes_max: usize::MAX,
            recipients_max: 10_000,
            idle_timeout: Duration::from_secs(86_400),
            ..SmtpLimits::default()
        };
        assert_eq!(raised.clamped(), SmtpLimits::default());
        let lowered = SmtpLimits {
            message_bytes_max: 1024,
            recipients_max: 2,
            ..SmtpLimits::default()
        };
        assert_eq!(lowered.clamped(), lowered);
    }
}
