//! The crate's one error type.

/// Why the relay configuration was refused.
///
/// Delivery itself never returns an error: every trouble there is an outcome of a
/// recipient (`Deferred` or `Failed`), because the caller must record one per
/// recipient whatever happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("[relay] {key}: {reason}")]
    BadConfig { key: String, reason: String },
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
}
