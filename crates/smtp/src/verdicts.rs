//! The one place where outcomes of the mail service become protocol verdicts.

use cm_repl::{Mail, MailError};
use cm_smtp_proto::sasl::Credentials;
use cm_smtp_proto::{AuthVerdict, DeliveryVerdict, RecipientVerdict, SenderVerdict};
use cm_types::Address;

/// No open relay: a domain the ring does not serve is refused before any lookup.
pub async fn recipient(mail: &Mail, recipient: &Address) -> RecipientVerdict {
    if !mail.serves_domain(recipient.domain()) {
        return RecipientVerdict::DomainNotServed;
    }
    match mail.account_exists(recipient).await {
        Ok(true) => RecipientVerdict::Accepted,
        Ok(false) => RecipientVerdict::UnknownUser,
        Err(error) => {
            tracing::warn!(%error, "recipient lookup failed");
            RecipientVerdict::Unavailable
        }
    }
}

/// Whether a sender's domain is one the ring serves, where the core binds the
/// address to the login. No lookup: an unknown account in a served domain is
/// bound all the same, so nobody can send as it.
pub fn sender(mail: &Mail, sender: &Address) -> SenderVerdict {
    if mail.serves_domain(sender.domain()) {
        SenderVerdict::DomainServed
    } else {
        SenderVerdict::DomainNotServed
    }
}

/// An identity that is no valid address is a wrong login like any other: the
/// peer learns nothing about which part was wrong.
pub async fn credentials(mail: &Mail, credentials: &Credentials) -> AuthVerdict {
    let Ok(address) = Address::parse(&credentials.identity) else {
        return AuthVerdict::Rejected;
    };
    match mail.authenticate(&address, &credentials.password).await {
        Ok(true) => AuthVerdict::Accepted(address),
        Ok(false) => AuthVerdict::Rejected,
        Err(error) => {
            tracing::warn!(%error, "authentication lookup failed");
            AuthVerdict::Unavailable
        }
    }
}

/// docs/DESIGN.md §4: 250 only once every copy is durable; any failure is 451 so that
/// the client keeps the message and retries, except input the store refuses.
pub fn delivery<Id: std::fmt::Display>(outcome: Result<Vec<Id>, MailError>) -> DeliveryVerdict {
    match outcome {
        Ok(ids) => {
            let first = ids
                .first()
                .expect("one id per recipient, and a delivery has recipients");
            DeliveryVerdict::Stored {
                queue_id: first.to_string(),
            }
        }
        Err(MailError::Invalid(reason)) => {
            tracing::warn!(%reason, "message refused by the store");
            DeliveryVerdict::PermanentFailure
        }
        Err(error) => {
            tracing::warn!(%error, "delivery failed");
            DeliveryVerdict::TemporaryFailure
        }
    }
}
