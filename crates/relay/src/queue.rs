//! The outbound queue's worker on one node: every [`SCAN_PERIOD`] it takes the
//! entries this node coordinates that are due (`cm_repl::Mail::outbound_due`),
//! delivers them grouped by destination domain ([`deliver_batch`]), and writes back
//! each recipient's outcome, the attempt and the next schedule with the write
//! quorum. A settled entry with failures produces one DSN to its sender (never to
//! `<>`, never for a DSN), then the entry is removed.
//!
//! At-least-once: the coordinator of an entry's key works on it; when it dies the
//! next replica is coordinator and finds the entry due. A message the destination
//! accepted just before the coordinator died, whose outcome had not reached a
//! write quorum yet, is delivered again by the new coordinator: duplicates are
//! bounded by the number of takeovers during one attempt (one, usually), and the
//! outcome write follows each delivery at once to keep that window short.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cm_model::outbound::bounded_error;
use cm_model::{Attempt, Outbound, Outcome};
use cm_repl::{Mail, MailError, now_ms};
use cm_types::{Address, metrics};
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::deliver::{Envelope, OutboundMessage, RecipientOutcome, deliver_batch};
use crate::dsn::{DsnFailure, DsnReport, dsn, should_bounce};
use crate::limits::BATCH_MESSAGES_MAX;
use crate::route::Resolver;

/// Pause between two scans of the queue.
pub const SCAN_PERIOD: Duration = Duration::from_secs(1);
/// Entries taken per scan at most; the rest wait for the next scan.
pub const ENTRIES_PER_SCAN_MAX: usize = 1000;
/// Status and text of a recipient whose entry outlived its lifetime (RFC 3463).
const EXPIRED_STATUS: &str = "4.4.7";

/// Runs scans until `shutdown`.
pub async fn run<R: Resolver + 'static>(
    mail: Mail,
    config: Arc<RelayConfig>,
    resolver: Arc<R>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SCAN_PERIOD) => {}
        }
        if let Err(error) = scan(&mail, &config, resolver.as_ref()).await {
            tracing::warn!(%error, "outbound queue scan failed; the next scan retries");
        }
    }
}

/// One scan: every due entry this node coordinates gets one attempt.
pub async fn scan<R: Resolver>(
    mail: &Mail,
    config: &RelayConfig,
    resolver: &R,
) -> Result<(), MailError> {
    let now = now_ms();
    let found = mail.outbound_due(now, ENTRIES_PER_SCAN_MAX).await?;
    metrics::OUTBOUND_QUEUE_DEPTH.set(found.n_coordinated as u64);
    metrics::OUTBOUND_OLDEST_AGE_SECONDS.set(
        found
            .oldest_created_ms
            .map_or(0, |created_ms| now.saturating_sub(created_ms) / 1000),
    );
    if found.due.is_empty() {
        return Ok(());
    }
    let mut entries: Vec<Attempted> = found
        .due
        .into_iter()
        .map(|(entry, body)| Attempted::new(entry, body))
        .collect();
    for (domain, members) in by_domain(&entries) {
        for chunk in members.chunks(BATCH_MESSAGES_MAX) {
            let batch: Vec<OutboundMessage<'_>> = chunk
                .iter()
                .map(|(entry_idx, envelope)| OutboundMessage {
                    envelope,
                    message: &entries[*entry_idx].body,
                })
                .collect();
            let outcomes = deliver_batch(config, resolver, &domain, &batch).await;
            for ((entry_idx, envelope), recipient_outcomes) in chunk.iter().zip(outcomes) {
                let entry = &mut entries[*entry_idx];
                for (recipient, outcome) in envelope.recipients.iter().zip(recipient_outcomes) {
                    entry.record(recipient, outcome);
                }
            }
        }
    }
    for attempted in entries {
        let id = attempted.entry.id;
        if let Err(error) = finish(mail, config, attempted, now).await {
            tracing::warn!(%id, %error, "recording an outbound attempt failed; the entry stays due");
        }
    }
    Ok(())
}

/// One due entry during a scan: its envelope, octets and what this attempt found.
struct Attempted {
    entry: Outbound,
    body: Bytes,
    deferrals: Vec<String>,
}

impl Attempted {
    fn new(entry: Outbound, body: Bytes) -> Attempted {
        Attempted {
            entry,
            body,
            deferrals: Vec::new(),
        }
    }

    fn record(&mut self, recipient: &Address, outcome: RecipientOutcome) {
        let recipient = recipient.to_string();
        match outcome {
            RecipientOutcome::Delivered { reply } => {
                metrics::OUTBOUND_DELIVERIES.increment();
                tracing::info!(id = %self.entry.id, %recipient, reply = %reply, "outbound delivered");
                self.entry.outcomes.insert(recipient, Outcome::Delivered);
            }
            RecipientOutcome::Failed { reason, status } => {
                tracing::info!(id = %self.entry.id, %recipient, %status, "outbound failed");
                let reason = bounded_error(&reason);
                let status = bounded_error(&status);
                self.entry
                    .outcomes
                    .insert(recipient, Outcome::Failed { status, reason });
            }
            RecipientOutcome::Deferred { reason } => {
                metrics::OUTBOUND_DEFERRALS.increment();
                tracing::info!(id = %self.entry.id, %recipient, %reason, "outbound deferred");
                self.deferrals.push(format!("{recipient}: {reason}"));
            }
        }
    }
}

/// The pending recipients of every entry, grouped by domain: domain -> (entry index,
/// the envelope of that entry's recipients there). Recipients that are not valid
/// addresses (the entry was checked on arrival, so only a corrupt copy has them)
/// fail at once.
fn by_domain(entries: &[Attempted]) -> BTreeMap<String, Vec<(usize, Envelope)>> {
    let mut domains: BTreeMap<String, Vec<(usize, Envelope)>> = BTreeMap::new();
    for (entry_idx, attempted) in entries.iter().enumerate() {
        let sender = Address::parse(&attempted.entry.sender).ok();
        let mut per_domain: BTreeMap<String, Vec<Address>> = BTreeMap::new();
        for recipient in attempted.entry.pending() {
            if let Ok(address) = Address::parse(recipient) {
                per_domain
                    .entry(address.domain().to_owned())
                    .or_default()
                    .push(address);
            }
        }
        for (domain, recipients) in per_domain {
            let envelope = Envelope {
                sender: sender.clone(),
                recipients,
            };
            domains
                .entry(domain)
                .or_default()
                .push((entry_idx, envelope));
        }
    }
    domains
}

/// Writes the attempt's results: outcomes, the attempt, and either the next
/// schedule or — once every recipient is settled — the DSN and the removal.
async fn finish(
    mail: &Mail,
    config: &RelayConfig,
    attempted: Attempted,
    now: u64,
) -> Result<(), MailError> {
    let Attempted {
        mut entry,
        body,
        deferrals,
    } = attempted;
    let last_error = bounded_error(&deferrals.join("; "));
    for recipient in entry.recipients.clone() {
        if !entry.outcomes.contains_key(&recipient) && !has_address(&recipient) {
            entry.outcomes.insert(
                recipient,
                Outcome::Failed {
                    status: "5.1.3".to_owned(),
                    reason: "invalid recipient address".to_owned(),
                },
            );
        }
    }
    if !entry.is_settled() && config.expired(entry.created_ms, now) {
        let reason = bounded_error(&format!("delivery time expired; last error: {last_error}"));
        for recipient in entry.pending().cloned().collect::<Vec<_>>() {
            entry.outcomes.insert(
                recipient,
                Outcome::Failed {
                    status: EXPIRED_STATUS.to_owned(),
                    reason: reason.clone(),
                },
            );
        }
    }
    entry.record_attempt(Attempt {
        at_ms: now,
        node: mail.config().node_id,
        error: last_error,
    });
    if !entry.is_settled() {
        let n_attempts = u32::try_from(entry.attempts.len()).unwrap_or(u32::MAX);
        let delay = config.retry_delay(n_attempts, rand::random_range(0..=1000));
        entry.next_attempt = (mail.next_version(), now + delay.as_millis() as u64);
        return mail.update_outbound(entry).await;
    }
    if entry.failures().next().is_some() {
        bounce(mail, config, &entry, &body, now).await?;
    }
    entry.removed_ms = Some(now);
    mail.update_outbound(entry).await
}

fn has_address(recipient: &str) -> bool {
    Address::parse(recipient).is_ok()
}

/// Sends the DSN for the failed recipients of `entry` to its sender: into the
/// sender's mailbox when the ring serves its domain, else through the queue with the
/// null sender (so that it can never bounce back).
async fn bounce(
    mail: &Mail,
    config: &RelayConfig,
    entry: &Outbound,
    body: &[u8],
    now: u64,
) -> Result<(), MailError> {
    let Ok(sender) = Address::parse(&entry.sender) else {
        return Ok(());
    };
    if !should_bounce(Some(&sender), body) {
        return Ok(());
    }
    let failed: Vec<(Address, String, String)> = entry
        .failures()
        .filter_map(|(recipient, status, reason)| {
            Address::parse(recipient)
                .ok()
                .map(|address| (address, status.to_owned(), reason.to_owned()))
        })
        .collect();
    let failures: Vec<DsnFailure<'_>> = failed
        .iter()
        .map(|(recipient, status, diagnostic)| DsnFailure {
            recipient,
            status,
            diagnostic,
        })
        .collect();
    metrics::OUTBOUND_BOUNCES.add(failures.len() as u64);
    let date = cm_types::date::rfc5322_date((now / 1000) as i64);
    let arrival_date = cm_types::date::rfc5322_date((entry.created_ms / 1000) as i64);
    let report = DsnReport {
        reporting_host: &config.hostname,
        date: &date,
        arrival_date: Some(&arrival_date),
        sender: &sender,
        failures: &failures,
        original_message: body,
    };
    let notification = Bytes::from(dsn(&report));
    tracing::info!(id = %entry.id, %sender, n_failed = failures.len(), "outbound bounced");
    if mail.serves_domain(sender.domain()) {
        mail.deliver(std::slice::from_ref(&sender), notification)
            .await
            .map(|_| ())
    } else {
        mail.enqueue(None, std::slice::from_ref(&sender), notification)
            .await
            .map(|_| ())
    }
}
