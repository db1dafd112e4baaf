//! Deletions (POP3 QUIT, later IMAP EXPUNGE): tombstones written so that a refused
//! deletion removes nothing and an acknowledged one never comes back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cm_model::MessageId;
use cm_ring::NodeRef;
use cm_store::Write;

use crate::quorum::Fanout;
use crate::{Mail, MailError, MaildropLock, now_ms};

/// How long a deletion that failed to reach a write quorum keeps retrying (QUIT
/// waits that long at most before it answers -ERR).
pub const DELETE_COMPLETION_MAX: Duration = Duration::from_secs(6);
/// Pause between two attempts of a deletion.
const DELETE_RETRY_PAUSE: Duration = Duration::from_millis(250);

impl Mail {
    /// Deletes messages of the locked maildrop as tombstones on a write quorum. On
    /// `Err` the deletion was not acknowledged and, as far as this node can tell,
    /// removed nothing (docs/DESIGN.md §6):
    /// - before writing, a write quorum of the replica set must answer a ring call, so
    ///   the common refusal (replicas crashed or cut off) writes nothing anywhere;
    /// - this node's own copy, if it is a replica, is written only after `W - 1`
    ///   others hold theirs (fault seed 230: the others failed, the local copy
    ///   survived and anti-entropy spread it);
    /// - once the writes have started, a failure is not given up at once: a
    ///   tombstone that reached some replica will be spread by anti-entropy, and a
    ///   lost acknowledgement cannot be told from a failed write. The deletion is
    ///   retried on the members that lack it until a write quorum holds it, for
    ///   [`DELETE_COMPLETION_MAX`] at most (fault seed 753: a session on a node
    ///   outside the set reached one of three replicas, answered -ERR, and the
    ///   deletion took effect later).
    ///
    /// What remains: a tombstone that landed on some replica while a write quorum
    /// stayed out of reach for all of [`DELETE_COMPLETION_MAX`].
    pub async fn delete(&self, lock: &MaildropLock, ids: &[MessageId]) -> Result<(), MailError> {
        if !lock.is_held() {
            return Err(MailError::Unavailable(
                "the maildrop lease was lost".to_owned(),
            ));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let mut set = self.replica_set(lock.key()).await?;
        self.check_write_quorum_answers(&set).await?;
        let deleted_ms = now_ms();
        let writes: Arc<Vec<Write>> = Arc::new(
            ids.iter()
                .map(|id| Write::Tombstone {
                    key: lock.key(),
                    address: lock.address().clone(),
                    id: *id,
                    deleted_ms,
                })
                .collect(),
        );
        let holders: Arc<Mutex<Vec<u64>>> = Arc::default();
        let deadline = tokio::time::Instant::now() + DELETE_COMPLETION_MAX;
        let mut n_attempts = 0;
        loop {
            n_attempts += 1;
            let attempt = self.write_deletion(set, writes.clone(), holders.clone());
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_) => MailError::Unavailable(format!(
                    "the deletion reached no write quorum within {DELETE_COMPLETION_MAX:?}"
                )),
            };
            if tokio::time::Instant::now() + DELETE_RETRY_PAUSE >= deadline {
                return Err(error);
            }
            if n_attempts == 1 {
                tracing::warn!(address = %lock.address(), %error, "deletion not on a write quorum yet; retrying");
            }
            tokio::time::sleep(DELETE_RETRY_PAUSE).await;
            set = self.replica_set(lock.key()).await?;
        }
    }

    /// One attempt of a deletion: the members of `set` that do not hold the
    /// tombstones yet (`holders`, node ids, grows as acknowledgements arrive, also
    /// late ones) get them; this node's copy, if it is a member, only once `W - 1`
    /// others hold theirs.
    async fn write_deletion(
        &self,
        set: Vec<NodeRef>,
        writes: Arc<Vec<Write>>,
        holders: Arc<Mutex<Vec<u64>>>,
    ) -> Result<(), MailError> {
        let here = set.iter().any(|node| self.is_me(node));
        let held = |node: &NodeRef| {
            holders
                .lock()
                .expect("deletion holders mutex poisoned")
                .contains(&node.id)
        };
        let (holding, lacking): (Vec<NodeRef>, Vec<NodeRef>) = set
            .into_iter()
            .filter(|node| !self.is_me(node))
            .partition(|node| held(node));
        let needed_elsewhere = self.quorum_size() - usize::from(here);
        if holding.len() < needed_elsewhere {
            let (writes, holders) = (writes.clone(), holders.clone());
            self.quorum_of(
                lacking,
                needed_elsewhere - holding.len(),
                "delete",
                Fanout::All,
                move |mail, node| {
                    let (writes, holders) = (writes.clone(), holders.clone());
                    async move {
                        mail.member(&node).apply(&writes).await?;
                        holders
                            .lock()
                            .expect("deletion holders mutex poisoned")
                            .push(node.id);
                        Ok(())
                    }
                },
            )
            .await?;
        }
        if here {
            self.member(&self.me()).apply(&writes).await?;
        }
        Ok(())
    }

    /// Fails unless a write quorum of `set` answers now.
    async fn check_write_quorum_answers(&self, set: &[NodeRef]) -> Result<(), MailError> {
        self.quorum(
            set.to_vec(),
            "check replicas",
            Fanout::Needed,
            |mail, node| async move { mail.member(&node).ping().await },
        )
        .await
        .map(|_| ())
    }
}
