//! Anti-entropy: every node periodically compares, with the other members of each
//! replica set, a digest per address it holds, and copies to them what they lack.
//!
//! One mechanism covers every repair the ring needs: a replica that was down or
//! partitioned catches up; when a node dies, its successor (already a replica) is
//! now coordinator and copies the range on to the new last member of each set
//! (re-replication); when a node joins, the nodes that held its range push it there
//! (hand-off). Data only ever merge (union of ids, last-writer-wins accounts), so a
//! repair can never undo a write, and a tombstone travels like any other write.
//!
//! Each node pushes; nobody pulls. Every holder of an address pushes to every other
//! member of its set, so a difference is repaired by whichever side holds the data.
//! Work per round is bounded ([`DIGESTS_PER_CALL_MAX`], [`REPAIR_BYTES_PER_ROUND_MAX`]).
//!
//! Tombstones are garbage-collected once older than a grace period (default 30
//! days, `tombstone_grace_s`): a replica that comes back after a longer absence could
//! bring deleted mail back, exactly as in other eventually consistent stores.
//!
//! Not done yet: nodes keep keys they no longer replicate (no drop after hand-off).

use std::collections::BTreeMap;
use std::time::Duration;

use cm_model::Account;
use cm_ring::NodeRef;
use cm_store::Write;
use cm_types::{Address, metrics};
use tokio_util::sync::CancellationToken;

use crate::convert::address_from_pb;
use crate::{Mail, MailError, pb};

/// Digests sent in one comparison call (and accepted by the server side).
pub const DIGESTS_PER_CALL_MAX: usize = 1024;
/// Message octets copied to other replicas per round at most; the rest waits for the
/// next round, so repair traffic never starves client traffic.
pub const REPAIR_BYTES_PER_ROUND_MAX: usize = 64 * 1024 * 1024;
/// Octets in one repair write batch at most.
const REPAIR_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Default pause between rounds.
pub const ROUND_PERIOD_DEFAULT: Duration = Duration::from_secs(2);

/// Default age after which a tombstone may be collected.
pub const TOMBSTONE_GRACE_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Rounds between two tombstone collections (10 minutes at the default period).
const ROUNDS_PER_TOMBSTONE_COLLECTION: u64 = 300;
/// Tombstones collected per collection at most.
const TOMBSTONES_PER_COLLECTION_MAX: usize = 10_000;

/// Runs rounds until `shutdown`, collecting tombstones older than `tombstone_grace`
/// every few hundred rounds.
pub async fn run(
    mail: Mail,
    period: Duration,
    tombstone_grace: Duration,
    shutdown: CancellationToken,
) {
    let mut n_rounds: u64 = 0;
    // When the first round that found differences started; cleared by a clean round.
    let mut out_of_sync_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        n_rounds += 1;
        if n_rounds % ROUNDS_PER_TOMBSTONE_COLLECTION == 1 {
            collect_tombstones(&mail, tombstone_grace).await;
        }
        let round_started = std::time::Instant::now();
        match round(&mail).await {
            Ok(outcome) => {
                match (outcome.n_differing, out_of_sync_since) {
                    (0, Some(since)) => {
                        metrics::REPLICAS_RESTORE_MS_LAST.set(since.elapsed().as_millis() as u64);
                        out_of_sync_since = None;
                    }
                    (0, None) => {}
                    (_, None) => out_of_sync_since = Some(round_started),
                    (_, Some(_)) => {}
                }
                metrics::ANTI_ENTROPY_ROUNDS.increment();
                metrics::ADDRESSES_OUT_OF_SYNC.set(outcome.n_differing as u64);
                if outcome.n_repaired > 0 {
                    tracing::info!(
                        differing = outcome.n_differing,
                        repaired = outcome.n_repaired,
                        "anti-entropy round repaired replicas"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "anti-entropy round failed"),
        }
    }
}

async fn collect_tombstones(mail: &Mail, grace: Duration) {
    let cutoff_ms = crate::now_ms().saturating_sub(grace.as_millis() as u64);
    let store = mail.store().clone();
    let collected = tokio::task::spawn_blocking(move || {
        store.collect_tombstones(cutoff_ms, TOMBSTONES_PER_COLLECTION_MAX)
    })
    .await;
    match collected {
        Ok(Ok(0)) => {}
        Ok(Ok(n_collected)) => {
            tracing::info!(n_collected, "collected tombstones past their grace period")
        }
        Ok(Err(error)) => tracing::warn!(%error, "collecting tombstones failed"),
        Err(error) => tracing::warn!(%error, "the tombstone collector failed"),
    }
}

#[derive(Debug, Default)]
pub struct RoundOutcome {
    /// (address, peer) pairs whose digests differed.
    pub n_differing: usize,
    /// Writes (messages, tombstones, accounts) copied to peers.
    pub n_repaired: usize,
}

/// One round over every address held here.
pub async fn round(mail: &Mail) -> Result<RoundOutcome, MailError> {
    let digests = mail.local().digests().await?;
    let mut by_peer: BTreeMap<(u64, String), Vec<pb::AddressDigest>> = BTreeMap::new();
    for (key, address, digest) in digests {
        let Ok(set) = mail.replica_set(key).await else {
            continue;
        };
        for member in set.into_iter().filter(|member| !mail.is_me(member)) {
            by_peer
                .entry((member.id, member.addr))
                .or_default()
                .push(pb::AddressDigest {
                    address: address.to_string(),
                    digest,
                });
        }
    }
    let mut outcome = RoundOutcome::default();
    let mut budget_bytes = REPAIR_BYTES_PER_ROUND_MAX;
    for ((id, addr), entries) in by_peer {
        let peer = NodeRef { id, addr };
        for chunk in entries.chunks(DIGESTS_PER_CALL_MAX) {
            let request = pb::DigestRequest {
                entries: chunk.to_vec(),
            };
            let Ok(reply) = mail
                .remote(&peer, "compare_digests", |mut client| async move {
                    client.compare_digests(request).await
                })
                .await
            else {
                break;
            };
            outcome.n_differing += reply.differing.len();
            for text in reply.differing {
                if budget_bytes == 0 {
                    break;
                }
                let address = address_from_pb(&text)?;
                match push_address(mail, &peer, &address, &mut budget_bytes).await {
                    Ok(n_writes) => outcome.n_repaired += n_writes,
                    Err(error) => {
                        tracing::debug!(peer = %peer.addr, %address, %error, "repair failed; next round retries");
                        break;
                    }
                }
            }
        }
    }
    Ok(outcome)
}

/// Copies to `peer` what it lacks of `address`: a newer account version, messages
/// and tombstones. Returns the number of writes sent.
async fn push_address(
    mail: &Mail,
    peer: &NodeRef,
    address: &Address,
    budget_bytes: &mut usize,
) -> Result<usize, MailError> {
    let key = mail.key(address);
    let (ours_account, ours) = mail.local_replica(address).await?;
    let theirs = mail.mailbox_on(peer, address).await?;
    let theirs_account = mail.account_on(peer, address).await?;

    let mut batches: Vec<Vec<Write>> = vec![Vec::new()];
    let mut batch_bytes = 0usize;
    let mut n_writes = 0usize;
    let newer = |ours: &Account| {
        theirs_account
            .as_ref()
            .is_none_or(|theirs| ours.version > theirs.version)
    };
    if let Some(account) = ours_account.filter(newer) {
        batches[0].push(Write::Account { key, account });
        n_writes += 1;
    }
    for (id, deleted_ms) in &ours.tombstones {
        if !theirs.tombstones.contains_key(id) {
            batches[0].push(Write::Tombstone {
                key,
                address: address.clone(),
                id: *id,
                deleted_ms: *deleted_ms,
            });
            n_writes += 1;
        }
    }
    for id in ours.received.keys() {
        if theirs.received.contains_key(id)
            || ours.tombstones.contains_key(id)
            || theirs.tombstones.contains_key(id)
        {
            continue;
        }
        let Some(body) = mail.local().body(address, *id).await? else {
            continue;
        };
        if body.len() > *budget_bytes {
            break;
        }
        *budget_bytes -= body.len();
        if batch_bytes + body.len() > REPAIR_BATCH_BYTES_MAX
            && !batches.last().is_some_and(Vec::is_empty)
        {
            batches.push(Vec::new());
            batch_bytes = 0;
        }
        batch_bytes += body.len();
        batches
            .last_mut()
            .expect("never empty")
            .push(Write::Message {
                key,
                address: address.clone(),
                id: *id,
                body,
            });
        n_writes += 1;
    }
    for batch in batches.into_iter().filter(|batch| !batch.is_empty()) {
        mail.apply_on(peer, &batch).await?;
    }
    metrics::REPAIRS.add(n_writes as u64);
    Ok(n_writes)
}
