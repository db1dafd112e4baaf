//! Conversions between replication wire messages and the mail model.

use crate::pb;
use cm_model::{Account, Mailbox, MessageId, Version};
use cm_store::Write;
use cm_types::Address;

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
            Write::Meta { .. } => {
                unreachable!("node settings are never replicated; callers only pass mail writes")
            }
        }
    }
    batch
}

pub fn writes_from_pb(
    batch: pb::WriteBatch,
    key_of: impl Fn(&Address) -> u64,
) -> Result<Vec<Write>, MailError> {
    let mut writes =
        Vec::with_capacity(batch.accounts.len() + batch.messages.len() + batch.tombstones.len());
    for record in batch.accounts {
        let account = account_from_pb(record)?;
        writes.push(Write::Account {
            key: key_of(&account.address),
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
            key: key_of(&address),
            id: id_from_pb(&record.id)?,
            address,
            body: record.body,
        });
    }
    for record in batch.tombstones {
        let address = address_from_pb(&record.address)?;
        writes.push(Write::Tombstone {
            key: key_of(&address),
            id: id_from_pb(&record.id)?,
            address,
            deleted_ms: record.deleted_ms,
        });
    }
    Ok(writes)
}
