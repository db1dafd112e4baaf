//! Mail in and out: deliveries to a write quorum of each recipient's replica set,
//! and mailbox reads that merge every member that answers and repair missing
//! tombstones on the way.

use std::collections::BTreeMap;

use bytes::Bytes;
use cm_model::{Mailbox, MessageId};
use cm_store::Write;
use cm_types::{Address, RingKey};

use crate::replica::ReadFor;
use crate::{Mail, MailError, MaildropLock, MessageInfo, now_ms};

impl Mail {
    /// Stores one copy of `message` per recipient, each under its own id, and
    /// returns once every copy is durable on a write quorum of its replica set.
    /// The octets are shared, not copied: every recipient's write and every
    /// replica's request refer to the same `Bytes`.
    pub async fn deliver(
        &self,
        recipients: &[Address],
        message: Bytes,
    ) -> Result<Vec<MessageId>, MailError> {
        let arrival_ms = now_ms();
        let mut ids = Vec::with_capacity(recipients.len());
        let mut by_key: BTreeMap<RingKey, Vec<Write>> = BTreeMap::new();
        for recipient in recipients {
            let id = MessageId::generate(arrival_ms);
            ids.push(id);
            let key = self.key(recipient);
            by_key.entry(key).or_default().push(Write::Message {
                key,
                address: recipient.clone(),
                id,
                body: message.clone(),
            });
        }
        let mut writes = tokio::task::JoinSet::new();
        for (key, batch) in by_key {
            let mail = self.clone();
            writes.spawn(async move { mail.write_quorum(key, batch).await });
        }
        while let Some(joined) = writes.join_next().await {
            joined
                .map_err(|error| MailError::Storage(format!("delivery task failed: {error}")))??;
        }
        Ok(ids)
    }

    /// The merged mailbox from every member of the replica set that answers, `R` at
    /// least. Asking all of them, not just `R`, matters when the set has just changed
    /// (a healed partition, a restarted or refilled replica): a tombstone written to
    /// `W` members of an older set may then sit on one member of the current set
    /// only, and a read of `R` members could miss it and list a deleted message again
    /// (found by the fault harness). Members that lack tombstones the others hold get
    /// them at once (read repair) instead of at the next anti-entropy round.
    async fn read_mailbox(&self, address: &Address) -> Result<Mailbox, MailError> {
        let key = self.key(address);
        let answers = self
            .read_every_member(address, "read mailbox", |member, address| async move {
                member.mailbox(&address, ReadFor::Client).await
            })
            .await?;
        let mut merged = Mailbox::default();
        for (_, answer) in &answers {
            merged.merge(answer);
        }
        for (node, answer) in answers {
            let missing: Vec<Write> = merged
                .tombstones
                .iter()
                .filter(|(id, _)| !answer.tombstones.contains_key(id))
                .map(|(id, deleted_ms)| Write::Tombstone {
                    key,
                    address: address.clone(),
                    id: *id,
                    deleted_ms: *deleted_ms,
                })
                .collect();
            if !missing.is_empty() {
                self.repair(node, missing);
            }
        }
        Ok(merged)
    }

    /// Visible messages of the locked maildrop (merged from a read quorum), oldest first.
    pub async fn list(&self, lock: &MaildropLock) -> Result<Vec<MessageInfo>, MailError> {
        let mailbox = self.read_mailbox(lock.address()).await?;
        Ok(mailbox
            .visible()
            .map(|(id, size)| MessageInfo { id, size })
            .collect())
    }

    /// The message's octets, or `None` if no replica has it (any longer). This
    /// node's copy is read first, wherever the key lives now: bodies never change.
    pub async fn retrieve(
        &self,
        lock: &MaildropLock,
        id: MessageId,
    ) -> Result<Option<Bytes>, MailError> {
        let address = lock.address();
        if let Some(body) = self.inner.local.body(address, id).await? {
            return Ok(Some(body));
        }
        let mut last_error = None;
        for node in self.replica_set(lock.key()).await? {
            if self.is_me(&node) {
                continue;
            }
            match self.member(&node).body(address, id).await {
                Ok(Some(body)) => return Ok(Some(body)),
                Ok(None) => {}
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            Some(error) => Err(error),
            None => Ok(None),
        }
    }

    /// This node's own replica of one address, for operators (`/api/replicas/...`)
    /// and anti-entropy.
    pub async fn local_replica(
        &self,
        address: &Address,
    ) -> Result<(Option<cm_model::Account>, Mailbox), MailError> {
        Ok((
            self.inner.local.account(address).await?,
            self.inner.local.mailbox(address).await?,
        ))
    }
}
