//! The one place where outcomes of the mail service become POP3 outcomes.

use bytes::Bytes;
use cm_model::MessageId;
use cm_pop3_proto::{Listed, LoginFailure, UpdateOutcome};
use cm_repl::{Mail, MailError, MaildropLock};
use cm_types::Address;

/// Checks the credentials, then locks and lists the maildrop. A user name that is
/// no address is a wrong login like any other: the peer learns nothing about which
/// part was wrong.
pub async fn login(
    mail: &Mail,
    user: &str,
    password: &[u8],
) -> Result<(MaildropLock, Vec<Listed<MessageId>>), LoginFailure> {
    let Some(address) = user_address(user, &mail.config().domains) else {
        return Err(LoginFailure::BadCredentials);
    };
    match mail.authenticate(&address, password).await {
        Ok(true) => {}
        Ok(false) => return Err(LoginFailure::BadCredentials),
        Err(error) => {
            tracing::warn!(%error, "authentication failed to run");
            return Err(LoginFailure::Unavailable);
        }
    }
    let lock = match mail.lock_maildrop(&address).await {
        Ok(lock) => lock,
        Err(MailError::InUse) => return Err(LoginFailure::InUse),
        Err(error) => {
            tracing::warn!(%error, "maildrop lock failed");
            return Err(LoginFailure::Unavailable);
        }
    };
    match mail.list(&lock).await {
        Ok(infos) => {
            tracing::debug!(%address, n_messages = infos.len(), "maildrop locked");
            let listing = infos
                .into_iter()
                .map(|info| Listed {
                    id: info.id,
                    size: info.size,
                })
                .collect();
            Ok((lock, listing))
        }
        Err(error) => {
            tracing::warn!(%error, "maildrop listing failed");
            Err(LoginFailure::Unavailable)
        }
    }
}

/// A listed message, or `None` (answered `-ERR`) if it cannot be read now.
pub async fn retrieve(mail: &Mail, lock: &MaildropLock, id: MessageId) -> Option<Bytes> {
    match mail.retrieve(lock, id).await {
        Ok(Some(message)) => Some(message),
        Ok(None) => {
            tracing::warn!(%id, "listed message is gone from the store");
            None
        }
        Err(error) => {
            tracing::warn!(%error, %id, "retrieve failed");
            None
        }
    }
}

/// RFC 1939 §6 UPDATE: removes the deleted messages, all or none (docs/DESIGN.md §6).
pub async fn update(mail: &Mail, lock: &MaildropLock, deleted: &[MessageId]) -> UpdateOutcome {
    if deleted.is_empty() {
        return UpdateOutcome::Removed;
    }
    match mail.delete(lock, deleted).await {
        Ok(()) => {
            tracing::debug!(n_deleted = deleted.len(), "messages removed");
            UpdateOutcome::Removed
        }
        Err(error) => {
            tracing::warn!(%error, n_deleted = deleted.len(), "removing messages failed");
            UpdateOutcome::Failed
        }
    }
}

/// The account a USER name (or SASL authcid) names: a full address, or a bare
/// local part in the first domain the ring serves. `None` if it is no address.
fn user_address(user: &str, domains: &[String]) -> Option<Address> {
    if user.contains('@') {
        return Address::parse(user).ok();
    }
    let domain = domains.first()?;
    Address::parse(&format!("{user}@{domain}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_become_addresses() {
        let domains = vec!["example.org".to_owned(), "localhost".to_owned()];
        let table: [(&str, Option<&str>); 4] = [
            ("Alice@Example.org", Some("alice@example.org")),
            ("bob", Some("bob@example.org")),
            ("bad@", None),
            ("a b", None),
        ];
        for (user, expected) in table {
            assert_eq!(
                user_address(user, &domains).as_ref().map(Address::as_str),
                expected,
                "{user}"
            );
        }
        assert_eq!(user_address("bob", &[]), None);
    }
}
