//! The quorum fan-out every replicated operation runs: ask the members of a replica
//! set, count distinct nodes that succeeded, decide at `W` (or `R`).

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use cm_ring::NodeRef;
use cm_store::Write;
use cm_types::{Address, metrics};

use crate::replica::Replica;
use crate::{Mail, MailError, READ_STRAGGLER_GRACE};

/// Which members a quorum call asks, and when it returns.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fanout {
    /// Every member at once; done at the `needed`-th success. The calls still
    /// running go on in the background (a write that reaches more replicas than
    /// needed is welcome).
    All,
    /// This node first and only as many others as needed, one more per failure
    /// (reads: fewer calls, same guarantee).
    Needed,
    /// Every member at once; after the `needed`-th success, the others still get
    /// this long to answer, and their answers are returned too.
    Everyone { grace: Duration },
}

impl Mail {
    /// Runs `op` on members of `set` until `W` (= `R`, a majority) succeeded, and
    /// returns their answers.
    pub(crate) async fn quorum<T, F, Fut>(
        &self,
        set: Vec<NodeRef>,
        what: &str,
        fanout: Fanout,
        op: F,
    ) -> Result<Vec<T>, MailError>
    where
        T: Send + 'static,
        F: Fn(Mail, NodeRef) -> Fut,
        Fut: Future<Output = Result<T, MailError>> + Send + 'static,
    {
        self.quorum_of(set, self.quorum_size(), what, fanout, op)
            .await
    }

    /// `W` and `R`: a majority of the replicas.
    pub(crate) fn quorum_size(&self) -> usize {
        self.config().quorum()
    }

    /// [`Mail::quorum`] with an explicit number of successes needed.
    ///
    /// Successes count distinct nodes: a set that names a node twice (two views
    /// merged during churn) still needs `needed` different nodes. A member that
    /// answers [`MailError::InUse`] decides the whole call at once (another session
    /// holds the lease there; more grants elsewhere cannot undo that).
    pub(crate) async fn quorum_of<T, F, Fut>(
        &self,
        set: Vec<NodeRef>,
        needed: usize,
        what: &str,
        fanout: Fanout,
        op: F,
    ) -> Result<Vec<T>, MailError>
    where
        T: Send + 'static,
        F: Fn(Mail, NodeRef) -> Fut,
        Fut: Future<Output = Result<T, MailError>> + Send + 'static,
    {
        let mut members: Vec<NodeRef> = Vec::with_capacity(set.len());
        for node in set {
            if !members.iter().any(|member| member.id == node.id) {
                members.push(node);
            }
        }
        if members.len() < needed {
            metrics::QUORUM_FAILURES.increment();
            let reason = format!(
                "{what}: {} live replica(s) of {} reachable, {needed} needed",
                members.len(),
                self.config().replicas
            );
            tracing::warn!(%reason, "quorum not reached");
            return Err(MailError::Unavailable(reason));
        }
        members.sort_by_key(|member| !self.is_me(member));
        let n_first = match fanout {
            Fanout::All | Fanout::Everyone { .. } => members.len(),
            Fanout::Needed => needed,
        };
        let (sender, mut receiver) = tokio::sync::mpsc::channel(members.len());
        let spawn_call = |member: NodeRef| {
            let call = op(self.clone(), member.clone());
            let sender = sender.clone();
            tokio::spawn(async move {
                let outcome = call.await;
                let _ = sender.send((member, outcome)).await;
            });
        };
        let mut untried = members.split_off(n_first).into_iter();
        let mut n_pending = members.len();
        for member in members {
            spawn_call(member);
        }
        let mut successes = Vec::with_capacity(needed);
        let mut failures = Vec::new();
        let mut stragglers_until = None;
        while n_pending > 0 {
            let next = match stragglers_until {
                None => receiver.recv().await,
                Some(deadline) => match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((member, outcome)) = next else {
                break;
            };
            n_pending -= 1;
            match outcome {
                Ok(value) => {
                    successes.push(value);
                    if successes.len() == needed {
                        match fanout {
                            Fanout::Everyone { grace } => {
                                stragglers_until = Some(tokio::time::Instant::now() + grace)
                            }
                            Fanout::All | Fanout::Needed => return Ok(successes),
                        }
                    }
                }
                Err(MailError::InUse) => return Err(MailError::InUse),
                Err(error) => {
                    failures.push(format!("{}: {error}", member.addr));
                    if let Some(next) = untried.next() {
                        spawn_call(next);
                        n_pending += 1;
                    }
                }
            }
        }
        if successes.len() >= needed {
            return Ok(successes);
        }
        metrics::QUORUM_FAILURES.increment();
        let reason = format!(
            "{what}: {} of {needed} replicas answered ({})",
            successes.len(),
            failures.join("; ")
        );
        tracing::warn!(%reason, "quorum not reached");
        Err(MailError::Unavailable(reason))
    }
}

impl Mail {
    /// Writes `writes` (all under `key`) to a write quorum of its replica set.
    pub(crate) async fn write_quorum(
        &self,
        key: cm_types::RingKey,
        writes: Vec<cm_store::Write>,
    ) -> Result<(), MailError> {
        let set = self.replica_set(key).await?;
        let writes = std::sync::Arc::new(writes);
        self.quorum(set, "write", Fanout::All, move |mail, node| {
            let writes = writes.clone();
            async move { mail.member(&node).apply(&writes).await }
        })
        .await
        .map(|_| ())
    }
}

impl Mail {
    /// Reads `what` of `address` from every member of its replica set that answers,
    /// `R` at least; members slower than the `R`-th get [`READ_STRAGGLER_GRACE`]
    /// more. Asking all of them matters when the set has just changed: a write that
    /// reached `W` members of an older set may sit on one member of the current set
    /// only. Returns each answer with the node that gave it, for read repair.
    pub(crate) async fn read_every_member<T, F, Fut>(
        &self,
        address: &Address,
        what: &str,
        read: F,
    ) -> Result<Vec<(NodeRef, T)>, MailError>
    where
        T: Send + 'static,
        F: Fn(Arc<dyn Replica>, Address) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, MailError>> + Send + 'static,
    {
        let set = self.replica_set(self.key(address)).await?;
        let (target, read) = (address.clone(), Arc::new(read));
        let fanout = Fanout::Everyone {
            grace: READ_STRAGGLER_GRACE,
        };
        self.quorum(set, what, fanout, move |mail, node| {
            let answer = read(mail.member(&node), target.clone());
            async move { Ok((node, answer.await?)) }
        })
        .await
    }

    /// Copies `writes` to the member on `node` in the background (read repair): a
    /// failure only leaves the difference to the next anti-entropy round.
    pub(crate) fn repair(&self, node: NodeRef, writes: Vec<Write>) {
        let member = self.member(&node);
        tokio::spawn(async move {
            let n_writes = writes.len() as u64;
            match member.apply(&writes).await {
                Ok(()) => metrics::READ_REPAIRS.add(n_writes),
                Err(error) => tracing::debug!(member = %node.addr, %error, "read repair failed"),
            }
        });
    }
}
