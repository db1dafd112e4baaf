//! Conversions between replication wire messages and the mail model.

use crate::pb;
use cm_model::outbound::{OUTBOUND_ATTEMPTS_KEPT_MAX, OUTBOUND_RECIPIENTS_MAX, bounded_error};
use cm_model::{Account, Attempt, Mailbox, MessageId, Outbound, Outcome, Version};
use cm_store::Write;
use cm_types::{Address, key_of_address, key_of_outbound};

use crate::MailError;

pub fn id_to_pb(id: MessageId) -> Vec<u8> {
    id.as_u128().to_be_bytes().to_vec()
}

pub fn id_from_pb(bytes: &[u8]) -> Result<MessageId, MailError> {
    let raw: [u8; 16] = bytes
        .try_into()
        .map_err(|_| MailError::Invalid("a message id is 16 bytes".to_owned()))?;
    Ok(MessageId::from_u128(u128::from_be_bytes(raw)))
}

pub fn address_from_pb(text: &str) -> Result<Address, MailError> {
    Address::parse(text)
        .map_err(|error| MailError::Invalid(format!("invalid address {text:?}: {error}")))
}

pub fn account_to_pb(account: &Account) -> pb::AccountRecord {
    pb::AccountRecord {
        address: account.address.to_string(),
        password_hash: account.password_hash.clone(),
        wall_ms: account.version.wall_ms,
        counter: account.version.counter,
        node: account.version.node,
        deleted: account.deleted,
    }
}

pub fn account_from_pb(record: pb::AccountRecord) -> Result<Account, MailError> {
    Ok(Account {
        address: address_from_pb(&record.address)?,
        password_hash: record.password_hash,
        version: Version {
            wall_ms: record.wall_ms,
            counter: record.counter,
            node: record.node,
        },
        deleted: record.deleted,
    })
}

pub fn mailbox_to_pb(mailbox: &Mailbox) -> pb::MailboxReply {
    pb::MailboxReply {
        received: mailbox
            .received
            .iter()
            .map(|(id, size)| pb::MessageEntry {
                id: id_to_pb(*id),
                size: *size,
            })
            .collect(),
        tombstones: mailbox
            .tombstones
            .iter()
            .map(|(id, deleted_ms)| pb::TombstoneEntry {
                id: id_to_pb(*id),
                deleted_ms: *deleted_ms,
            })
            .collect(),
    }
}

pub fn mailbox_from_pb(reply: pb::MailboxReply) -> Result<Mailbox, MailError> {
    let mut mailbox = Mailbox::default();
    for entry in reply.received {
        mailbox.received.insert(id_from_pb(&entry.id)?, entry.size);
    }
    for entry in reply.tombstones {
        mailbox
            .tombstones
            .insert(id_from_pb(&entry.id)?, entry.deleted_ms);
    }
    Ok(mailbox)
}

/// The wire form of writes (the ring key is left out: the receiver derives it).
pub fn writes_to_pb(writes: &[Write]) -> pb::WriteBatch {
    let mut batch = pb::WriteBatch::default();
    for write in writes {
        match write {
            Write::Account { account, .. } => batch.accounts.push(account_to_pb(account)),
            Write::Message {
                address, id, body, ..
            } => batch.messages.push(pb::MessageRecord {
                address: address.to_string(),
                id: id_to_pb(*id),
                body: body.clone(),
            }),
            Write::Tombstone {
                address,
                id,
                deleted_ms,
                ..
            } => batch.tombstones.push(pb::TombstoneRecord {
                address: address.to_string(),
                id: id_to_pb(*id),
                deleted_ms: *deleted_ms,
            }),
            Write::Outbound { entry, body, .. } => {
                batch.outbound.push(outbound_to_pb(entry, body.clone()))
            }
            Write::Meta { .. } => {
                unreachable!("node settings are never replicated; callers only pass mail writes")
            }
        }
    }
    batch
}

pub fn writes_from_pb(batch: pb::WriteBatch, bits: u32) -> Result<Vec<Write>, MailError> {
    let mut writes =
        Vec::with_capacity(batch.accounts.len() + batch.messages.len() + batch.tombstones.len());
    for record in batch.accounts {
        let account = account_from_pb(record)?;
        writes.push(Write::Account {
            key: key_of_address(&account.address, bits),
            account,
        });
    }
    for record in batch.messages {
        let address = address_from_pb(&record.address)?;
        if record.body.len() > cm_types::limits::MESSAGE_BYTES_MAX + 64 * 1024 {
            return Err(MailError::Invalid(
                "message body over the size limit".to_owned(),
            ));
        }
        writes.push(Write::Message {
            key: key_of_address(&address, bits),
            id: id_from_pb(&record.id)?,
            address,
            body: record.body,
        });
    }
    for record in batch.tombstones {
        let address = address_from_pb(&record.address)?;
        writes.push(Write::Tombstone {
            key: key_of_address(&address, bits),
            id: id_from_pb(&record.id)?,
            address,
            deleted_ms: record.deleted_ms,
        });
    }
    for record in batch.outbound {
        let (entry, body) = outbound_from_pb(record)?;
        writes.push(Write::Outbound {
            key: key_of_outbound(entry.id.as_u128(), bits),
            entry: Box::new(entry),
            body,
        });
    }
    Ok(writes)
}

pub fn outbound_to_pb(entry: &Outbound, body: Option<bytes::Bytes>) -> pb::OutboundRecord {
    let (version, next_attempt_ms) = entry.next_attempt;
    pb::OutboundRecord {
        id: id_to_pb(entry.id),
        sender: entry.sender.clone(),
        recipients: entry.recipients.clone(),
        created_ms: entry.created_ms,
        outcomes: entry
            .outcomes
            .iter()
            .map(|(recipient, outcome)| match outcome {
                Outcome::Delivered => pb::OutboundOutcome {
                    recipient: recipient.clone(),
                    delivered: true,
                    ..Default::default()
                },
                Outcome::Failed { status, reason } => pb::OutboundOutcome {
                    recipient: recipient.clone(),
                    delivered: false,
                    status: status.clone(),
                    reason: reason.clone(),
                },
            })
            .collect(),
        attempts: entry
            .attempts
            .iter()
            .map(|attempt| pb::OutboundAttempt {
                at_ms: attempt.at_ms,
                node: attempt.node,
                error: attempt.error.clone(),
            })
            .collect(),
        next_wall_ms: version.wall_ms,
        next_counter: version.counter,
        next_node: version.node,
        next_attempt_ms,
        removed_ms: entry.removed_ms,
        body,
    }
}

/// An outbound entry from a peer, checked like client input: bounded counts and
/// texts, valid recipient addresses, a body within the message size limit.
pub fn outbound_from_pb(
    record: pb::OutboundRecord,
) -> Result<(Outbound, Option<bytes::Bytes>), MailError> {
    let invalid = |what: &str| MailError::Invalid(format!("outbound entry: {what}"));
    if record.recipients.is_empty() || record.recipients.len() > OUTBOUND_RECIPIENTS_MAX {
        return Err(invalid("recipient count out of bounds"));
    }
    if record.attempts.len() > OUTBOUND_ATTEMPTS_KEPT_MAX
        || record.outcomes.len() > record.recipients.len()
    {
        return Err(invalid("too many attempts or outcomes"));
    }
    if record
        .body
        .as_ref()
        .is_some_and(|body| body.len() > cm_types::limits::MESSAGE_BYTES_MAX + 64 * 1024)
    {
        return Err(invalid("message body over the size limit"));
    }
    let mailbox_text =
        |text: &str| -> Result<String, MailError> { Ok(address_from_pb(text)?.to_string()) };
    let sender = if record.sender.is_empty() {
        String::new()
    } else {
        mailbox_text(&record.sender)?
    };
    let recipients = record
        .recipients
        .iter()
        .map(|text| mailbox_text(text))
        .collect::<Result<Vec<_>, _>>()?;
    let version = Version {
        wall_ms: record.next_wall_ms,
        counter: record.next_counter,
        node: record.next_node,
    };
    let mut entry = Outbound::new(
        id_from_pb(&record.id)?,
        sender,
        recipients,
        record.created_ms,
        version,
    );
    entry.next_attempt = (version, record.next_attempt_ms);
    for outcome in record.outcomes {
        let recipient = mailbox_text(&outcome.recipient)?;
        if !entry.recipients.contains(&recipient) {
            return Err(invalid("an outcome for another recipient"));
        }
        let outcome_value = if outcome.delivered {
            Outcome::Delivered
        } else {
            Outcome::Failed {
                status: bounded_error(&outcome.status),
                reason: bounded_error(&outcome.reason),
            }
        };
        entry.outcomes.insert(recipient, outcome_value);
    }
    for attempt in record.attempts {
        entry.record_attempt(Attempt {
            at_ms: attempt.at_ms,
            node: attempt.node,
            error: bounded_error(&attempt.error),
        });
    }
    entry.removed_ms = record.removed_ms;
    Ok((entry, record.body))
}
