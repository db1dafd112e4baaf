//! The outbound queue as ring data (docs/DESIGN.md §12): each entry (envelope,
//! message, attempts) lives under its own ring key, is written to a write quorum
//! before the SMTP 250, is worked on by the coordinator of its key (the next
//! replica takes over when it dies: the replica set moves, nothing else), and is
//! reconciled by anti-entropy like a mailbox. Delivery itself (the SMTP client,
//! routes, retries, bounces) is `cm-relay`'s; this file only stores and schedules.

use bytes::Bytes;
use cm_model::{MessageId, Outbound, Version};
use cm_store::Write;
use cm_types::Address;

use crate::{Mail, MailError, now_ms};

/// What [`Mail::outbound_due`] found among the entries this node coordinates.
#[derive(Debug, Default)]
pub struct OutboundScan {
    /// The entries to try now, with their octets.
    pub due: Vec<(Outbound, Bytes)>,
    /// Live entries this node coordinates, due or not (the queue depth).
    pub n_coordinated: usize,
    /// When the oldest of them arrived.
    pub oldest_created_ms: Option<u64>,
}

impl Mail {
    /// Queues `message` from `sender` (`None` for `<>`) to `recipients`; `Ok` once
    /// a write quorum of the entry's replica set holds it.
    pub async fn enqueue(
        &self,
        sender: Option<&Address>,
        recipients: &[Address],
        message: Bytes,
    ) -> Result<MessageId, MailError> {
        let created_ms = now_ms();
        let id = MessageId::generate(created_ms);
        let entry = Outbound::new(
            id,
            sender.map(ToString::to_string).unwrap_or_default(),
            recipients.iter().map(ToString::to_string),
            created_ms,
            self.inner.clock.tick(created_ms),
        );
        self.write_outbound(entry, Some(message)).await?;
        Ok(id)
    }

    /// Writes a changed copy of an entry (outcomes, attempts, schedule, removal) to
    /// a write quorum; replicas merge it with theirs.
    pub async fn update_outbound(&self, entry: Outbound) -> Result<(), MailError> {
        self.write_outbound(entry, None).await
    }

    async fn write_outbound(&self, entry: Outbound, body: Option<Bytes>) -> Result<(), MailError> {
        let key = self.inner.local.outbound_key(entry.id);
        let write = Write::Outbound {
            key,
            entry: Box::new(entry),
            body,
        };
        self.write_quorum(key, vec![write]).await
    }

    /// A version for a schedule written by this node.
    pub fn next_version(&self) -> Version {
        self.inner.clock.tick(now_ms())
    }

    /// The entries this node holds a copy of, removed ones left out, at most `n_max`.
    pub async fn outbound_held(&self, n_max: usize) -> Result<Vec<Outbound>, MailError> {
        let store = self.store().clone();
        let entries = crate::local::blocking(move || store.outbound_entries(n_max)).await??;
        Ok(entries
            .into_iter()
            .map(|(_, entry)| entry)
            .filter(|entry| entry.removed_ms.is_none())
            .collect())
    }

    /// The entries this node should try now, with their octets: held here, not
    /// removed, due by `now_ms`, and coordinated by this node (the first live node
    /// of their replica set), at most `n_due_max`. An entry whose body has not
    /// reached this replica yet waits for anti-entropy.
    pub async fn outbound_due(
        &self,
        now_ms: u64,
        n_due_max: usize,
    ) -> Result<OutboundScan, MailError> {
        let store = self.store().clone();
        let held = crate::local::blocking(move || store.outbound_entries(usize::MAX)).await??;
        let mut scan = OutboundScan::default();
        for (key, entry) in held {
            if entry.removed_ms.is_some() {
                continue;
            }
            // An entry whose replica set cannot be found now (a lookup during
            // churn) waits for the next scan instead of failing this one.
            let Ok(set) = self.replica_set(key).await else {
                continue;
            };
            let coordinates = set
                .first()
                .is_some_and(|coordinator| self.is_me(coordinator));
            if !coordinates {
                continue;
            }
            scan.n_coordinated += 1;
            scan.oldest_created_ms = Some(
                scan.oldest_created_ms
                    .map_or(entry.created_ms, |oldest| oldest.min(entry.created_ms)),
            );
            if scan.due.len() == n_due_max || entry.next_attempt.1 > now_ms {
                continue;
            }
            if let Some(body) = self.store().outbound_body(key, entry.id)? {
                scan.due.push((entry, body));
            }
        }
        Ok(scan)
    }

    /// Makes the entry `id` due now (an operator's retry); `Ok(false)` if this node
    /// holds no live copy of it.
    pub async fn retry_outbound(&self, id: MessageId) -> Result<bool, MailError> {
        let Some(mut entry) = self.held_entry(id)? else {
            return Ok(false);
        };
        let now = now_ms();
        entry.next_attempt = (self.inner.clock.tick(now), now);
        self.update_outbound(entry).await?;
        Ok(true)
    }

    /// Removes the entry `id` without delivering or bouncing it (an operator's
    /// delete); `Ok(false)` if this node holds no live copy of it.
    pub async fn delete_outbound(&self, id: MessageId) -> Result<bool, MailError> {
        let Some(mut entry) = self.held_entry(id)? else {
            return Ok(false);
        };
        entry.removed_ms = Some(now_ms());
        self.update_outbound(entry).await?;
        Ok(true)
    }

    fn held_entry(&self, id: MessageId) -> Result<Option<Outbound>, MailError> {
        let key = self.inner.local.outbound_key(id);
        Ok(self
            .store()
            .outbound(key, id)?
            .filter(|entry| entry.removed_ms.is_none()))
    }
}
