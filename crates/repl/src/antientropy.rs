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

use cm_model::{Account, FolderId, MessageId};
use cm_ring::NodeRef;
use cm_store::Write;
use cm_types::{Address, metrics};
use tokio_util::sync::CancellationToken;

use crate::local::outbound_digest;
use crate::remote::RemoteReplica;
use crate::replica::{Digests, ReadFor, Replica};
use crate::{Mail, MailError};

/// Digests sent in one comparison call (and accepted by the server side).
pub const DIGESTS_PER_CALL_MAX: usize = 1024;
/// Outbound entries compared per round at most, in key order: a queue longer than
/// this has its first entries compared until delivery shortens it (a bound on the
/// work of one round, to be replaced by a cursor that walks the rest).
pub const OUTBOUND_ENTRIES_PER_ROUND_MAX: usize = 65_536;
/// Message octets copied to other replicas per round at most; the rest waits for the
/// next round, so repair traffic never starves client traffic.
pub const REPAIR_BYTES_PER_ROUND_MAX: usize = 64 * 1024 * 1024;
/// Octets in one repair write batch at most.
const REPAIR_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Message octets one hand-off copies at most; a node with more to receive gets the
/// rest from the ordinary rounds, which run right after.
pub const HANDOFF_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// How long a new node waits for its neighbours to know it and hand off its data
/// before it serves reads anyway (what is left then arrives by ordinary rounds).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of one hand-off call, which copies a whole range.
const HANDOFF_CALL_TIMEOUT: Duration = Duration::from_secs(60);
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
                metrics::ANTI_ENTROPY_ROUND_SECONDS.observe_duration(round_started.elapsed());
                metrics::ANTI_ENTROPY_ROUND_REPAIRED_ITEMS.observe(outcome.n_repaired as u64);
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

/// Catching up after starting with an empty store (a new node, or one whose disk was
/// lost): until the nodes around this one in the ring have handed it the data of the
/// keys it now replicates, it answers no client read. Otherwise a read quorum made
/// of it and a stale replica could miss an acknowledged write (a deletion coming
/// back after one disk loss, found by the fault harness). Writes are accepted
/// meanwhile; they only add.
pub async fn catch_up(mail: Mail, shutdown: CancellationToken) {
    let Some(ring) = mail.inner.ring.clone() else {
        return;
    };
    mail.local().set_syncing(true);
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    let n_neighbours = mail.config().replicas.saturating_sub(1).max(1);
    // First wait until the predecessors that hold our keys list us as a successor:
    // only then do their replica sets include us, and their hand-off is complete.
    let predecessors = loop {
        if shutdown.is_cancelled() {
            return;
        }
        match predecessors_that_know(&ring, n_neighbours).await {
            Some(predecessors) => break predecessors,
            None if tokio::time::Instant::now() > deadline => break Vec::new(),
            None => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let me = ring.me();
    let mut neighbours: Vec<NodeRef> = predecessors;
    for successor in ring.successors().into_iter().take(n_neighbours) {
        if successor.id != me.id && !neighbours.iter().any(|node| node.id == successor.id) {
            neighbours.push(successor);
        }
    }
    let mut n_writes = 0u64;
    for neighbour in &neighbours {
        let neighbour_replica = RemoteReplica::new(ring.clone(), neighbour.clone());
        match neighbour_replica.handoff(&me, HANDOFF_CALL_TIMEOUT).await {
            Ok(n_pushed) => n_writes += n_pushed,
            Err(_) => {
                tracing::warn!(neighbour = %neighbour.addr, "hand-off failed; ordinary rounds will repair")
            }
        }
    }
    mail.local().set_syncing(false);
    tracing::info!(
        n_neighbours = neighbours.len(),
        n_writes,
        seconds = started.elapsed().as_secs_f64(),
        "caught up: serving reads"
    );
}

/// The `n` predecessors of this node, once each lists this node among its
/// successors; `None` while some do not yet (or do not answer).
async fn predecessors_that_know(ring: &cm_net::RingHandle, n: usize) -> Option<Vec<NodeRef>> {
    let me = ring.me();
    let mut predecessors = Vec::new();
    let mut current = ring.predecessor()?;
    for _ in 0..n {
        if current.id == me.id
            || predecessors
                .iter()
                .any(|node: &NodeRef| node.id == current.id)
        {
            break;
        }
        let state = ring.peers().get_state(&current.addr).await.ok()?;
        if !state.successors.iter().any(|node| node.id == me.id) {
            return None;
        }
        predecessors.push(current);
        match state.predecessor {
            Some(next) => current = next,
            None => break,
        }
    }
    Some(predecessors)
}

async fn collect_tombstones(mail: &Mail, grace: Duration) {
    let cutoff_ms = crate::now_ms().saturating_sub(grace.as_millis() as u64);
    let store = mail.store().clone();
    let collected = tokio::task::spawn_blocking(move || {
        let n_tombstones = store.collect_tombstones(cutoff_ms, TOMBSTONES_PER_COLLECTION_MAX)?;
        let n_outbound = store.collect_outbound(cutoff_ms, TOMBSTONES_PER_COLLECTION_MAX)?;
        Ok::<_, cm_store::StoreError>(n_tombstones + n_outbound)
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
    /// (address, peer) pairs where the peer lacked something this node holds (or
    /// the repair failed). Digests that differ only because the peer is ahead are
    /// not counted: that difference is the peer's to push, if it is a replica.
    pub n_differing: usize,
    /// Writes (messages, tombstones, accounts) copied to peers.
    pub n_repaired: usize,
}

/// One round over every address held here, pushing to every other replica.
pub async fn round(mail: &Mail) -> Result<RoundOutcome, MailError> {
    round_towards(mail, None, REPAIR_BYTES_PER_ROUND_MAX).await
}

/// A round that pushes only to `only_peer` when given (a hand-off to a node that
/// asked for its data), with `budget_bytes` of message bodies at most.
pub async fn round_towards(
    mail: &Mail,
    only_peer: Option<&NodeRef>,
    mut budget_bytes: usize,
) -> Result<RoundOutcome, MailError> {
    let mut by_peer: BTreeMap<(u64, String), Digests> = BTreeMap::new();
    let wanted =
        |member: &NodeRef| !mail.is_me(member) && only_peer.is_none_or(|peer| peer.id == member.id);
    for (key, address, digest) in mail.local().digests().await? {
        let Ok(set) = mail.replica_set(key).await else {
            continue;
        };
        for member in set.into_iter().filter(wanted) {
            let digests = by_peer.entry((member.id, member.addr)).or_default();
            digests.addresses.push((address.clone(), digest));
        }
    }
    for (key, entry) in mail
        .store()
        .outbound_entries(OUTBOUND_ENTRIES_PER_ROUND_MAX)?
    {
        let Ok(set) = mail.replica_set(key).await else {
            continue;
        };
        let digest = outbound_digest(&entry);
        for member in set.into_iter().filter(wanted) {
            let digests = by_peer.entry((member.id, member.addr)).or_default();
            digests.outbound.push((entry.id, digest));
        }
    }
    let mut outcome = RoundOutcome::default();
    for ((id, addr), digests) in by_peer {
        let peer = NodeRef { id, addr };
        let member = mail.member(&peer);
        let address_chunks = digests
            .addresses
            .chunks(DIGESTS_PER_CALL_MAX)
            .map(|chunk| Digests {
                addresses: chunk.to_vec(),
                outbound: Vec::new(),
            });
        let outbound_chunks = digests
            .outbound
            .chunks(DIGESTS_PER_CALL_MAX)
            .map(|chunk| Digests {
                addresses: Vec::new(),
                outbound: chunk.to_vec(),
            });
        for chunk in address_chunks.chain(outbound_chunks) {
            let Ok(differing) = member.differing(&chunk).await else {
                break;
            };
            for address in differing.addresses {
                if budget_bytes == 0 {
                    outcome.n_differing += 1;
                    continue;
                }
                match push_address(mail, &peer, &address, &mut budget_bytes).await {
                    Ok(0) => {}
                    Ok(n_writes) => {
                        outcome.n_differing += 1;
                        outcome.n_repaired += n_writes;
                    }
                    Err(error) => {
                        outcome.n_differing += 1;
                        tracing::debug!(peer = %peer.addr, %address, %error, "repair failed; next round retries");
                        break;
                    }
                }
            }
            for id in differing.outbound {
                outcome.n_differing += 1;
                match push_outbound(mail, member.as_ref(), id).await {
                    Ok(()) => outcome.n_repaired += 1,
                    Err(error) => {
                        tracing::debug!(peer = %peer.addr, %id, %error, "outbound repair failed; next round retries");
                        break;
                    }
                }
            }
        }
    }
    Ok(outcome)
}

/// Copies this node's copy of the outbound entry `id`, with its body while it has
/// one, to `member`; the member merges it with its own.
async fn push_outbound(mail: &Mail, member: &dyn Replica, id: MessageId) -> Result<(), MailError> {
    let key = mail.local().outbound_key(id);
    let Some(entry) = mail.store().outbound(key, id)? else {
        return Ok(());
    };
    let body = match entry.removed_ms {
        Some(_) => None,
        None => mail.store().outbound_body(key, id)?,
    };
    member
        .apply(&[Write::Outbound {
            key,
            entry: Box::new(entry),
            body,
        }])
        .await?;
    metrics::REPAIRS.increment();
    Ok(())
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
    let member = mail.member(peer);
    let theirs = member.mailbox(address, ReadFor::Repair).await?;
    let theirs_account = member.account(address, ReadFor::Repair).await?;

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
        member.apply(&batch).await?;
    }
    n_writes += push_imap(mail, member.as_ref(), address, budget_bytes).await?;
    metrics::REPAIRS.add(n_writes as u64);
    Ok(n_writes)
}

/// Copies to `member` what it lacks of the IMAP data of `address`: folder records,
/// and per folder the flags, UIDs, tombstones and messages (with their octets,
/// within `budget_bytes`; messages over the budget wait for the next round).
/// Returns the number of writes sent.
async fn push_imap(
    mail: &Mail,
    member: &dyn Replica,
    address: &Address,
    budget_bytes: &mut usize,
) -> Result<usize, MailError> {
    let key = mail.key(address);
    let mut n_writes = 0;
    let ours = mail.local().folders(address).await?;
    if !ours.records.is_empty() {
        let theirs = member.folders(address, ReadFor::Repair).await?;
        let mut merged = theirs.clone();
        merged.merge(&ours);
        if merged != theirs {
            let write = Write::Folders {
                key,
                address: address.clone(),
                folders: Box::new(ours),
            };
            member.apply(&[write]).await?;
            n_writes += 1;
        }
    }
    for folder in mail.store().folder_ids(key, address)? {
        let mut ours = mail.local().folder(address, folder).await?;
        let theirs = member.folder(address, folder, ReadFor::Repair).await?;
        if folder == FolderId::INBOX {
            // INBOX's messages and tombstones went with the maildrop above.
            ours.mailbox = Default::default();
        }
        let mut bodies = Vec::new();
        let mut batch_bytes = 0usize;
        let lacking: Vec<MessageId> = ours
            .mailbox
            .visible()
            .map(|(id, _)| id)
            .filter(|id| !theirs.mailbox.received.contains_key(id))
            .filter(|id| !theirs.mailbox.tombstones.contains_key(id))
            .collect();
        for id in lacking {
            let body = match mail.local().folder_body(address, folder, id).await? {
                Some(body)
                    if body.len() <= *budget_bytes
                        && batch_bytes + body.len() <= REPAIR_BATCH_BYTES_MAX =>
                {
                    body
                }
                _ => {
                    ours.mailbox.received.remove(&id);
                    continue;
                }
            };
            *budget_bytes -= body.len();
            batch_bytes += body.len();
            bodies.push((id, body));
        }
        let mut merged = theirs.clone();
        merged.merge(&ours);
        let changes_theirs = if folder == FolderId::INBOX {
            merged.flags != theirs.flags || merged.uids != theirs.uids
        } else {
            merged != theirs
        };
        if !changes_theirs {
            continue;
        }
        let write = Write::Folder {
            key,
            address: address.clone(),
            folder,
            delta: Box::new(ours),
            bodies,
        };
        member.apply(&[write]).await?;
        n_writes += 1;
    }
    Ok(n_writes)
}
