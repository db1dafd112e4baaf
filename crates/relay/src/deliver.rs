//! Delivery of a batch of messages for one domain over as few connections as
//! possible, with one outcome per recipient.

use cm_types::Address;

use crate::client::{Broken, Reply, Session};
use crate::config::RelayConfig;
use crate::limits::{BATCH_MESSAGES_MAX, CONNECTIONS_PER_BATCH_MAX};
use crate::route::{Resolver, addresses, route};

/// The SMTP envelope of one outbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `None` is the null reverse-path `<>` of bounces and other notifications.
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
}

/// One message of a batch: its envelope and its bytes exactly as they go after DATA
/// (CRLF line ends, no dot-stuffing yet; the client stuffs).
#[derive(Debug, Clone, Copy)]
pub struct OutboundMessage<'a> {
    pub envelope: &'a Envelope,
    pub message: &'a [u8],
}

/// What became of one recipient in one attempt (RFC 5321 §4.2.1: the reply's first
/// digit decides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// A 2xx to the final dot: the receiver took responsibility. `reply` is its text,
    /// usually with the receiver's queue id.
    Delivered { reply: String },
    /// A 4xx, a lost connection, a timeout or no reachable host: try again later.
    Deferred { reason: String },
    /// A 5xx, or a domain that cannot receive mail: bounce (a DSN with `status`,
    /// an RFC 3463 code such as `5.1.1`, and `reason` as its diagnostic).
    Failed { reason: String, status: String },
}

impl RecipientOutcome {
    fn from_reply(reply: &Reply) -> RecipientOutcome {
        match reply.class() {
            2 => RecipientOutcome::Delivered {
                reply: reply.diagnostic(),
            },
            5 => RecipientOutcome::Failed {
                reason: reply.diagnostic(),
                status: reply.status(),
            },
            // 4xx, and a 3xx where none belongs, which says nothing final.
            _ => RecipientOutcome::Deferred {
                reason: reply.diagnostic(),
            },
        }
    }
}

/// Delivers `batch` (messages whose recipients are all in `domain`) to the domain's
/// hosts and returns, per message in batch order, the outcome of each recipient in
/// envelope order.
///
/// One connection carries every message, with RSET between them; a connection that
/// fails to open, greets with an error, refuses EHLO or breaks in the middle sends the
/// messages not yet settled to the next address, then the next host (RFC 5321 §5.1),
/// at most [`CONNECTIONS_PER_BATCH_MAX`] connections in all. A STARTTLS handshake
/// that fails is retried once on the same address without TLS. Recipients still
/// unsettled when the hosts run out are deferred with the last reason seen.
///
/// A connection lost after the final dot was sent but before its reply defers the
/// message's recipients without trying another host: the receiver may have it, and
/// RFC 5321 §4.1.1.4 leaves a duplicate as the price of not losing it.
///
/// # Panics
/// When a recipient is outside `domain`, or the batch is empty or longer than
/// [`BATCH_MESSAGES_MAX`]: the caller groups the queue by domain.
#[tracing::instrument(name = "relay.batch", skip_all, fields(domain = %domain, n_messages = batch.len()))]
pub async fn deliver_batch<R: Resolver>(
    config: &RelayConfig,
    resolver: &R,
    domain: &str,
    batch: &[OutboundMessage<'_>],
) -> Vec<Vec<RecipientOutcome>> {
    assert!(
        (1..=BATCH_MESSAGES_MAX).contains(&batch.len()),
        "batch of {} messages",
        batch.len()
    );
    for outbound in batch {
        assert!(
            !outbound.envelope.recipients.is_empty(),
            "message without recipients"
        );
        for recipient in &outbound.envelope.recipients {
            assert!(
                recipient.domain().eq_ignore_ascii_case(domain),
                "recipient {recipient} is not in {domain}"
            );
        }
    }
    let mut outcomes: Vec<Vec<Option<RecipientOutcome>>> = batch
        .iter()
        .map(|outbound| vec![None; outbound.envelope.recipients.len()])
        .collect();
    let hops = match route(config, resolver, domain).await {
        Ok(hops) => hops,
        Err(outcome) => return settle_all(outcomes, &outcome),
    };
    let mut last_reason = format!("no host for {domain} could be reached");
    let mut n_connections = 0;
    'hops: for hop in &hops {
        let socket_addresses = match addresses(resolver, hop).await {
            Ok(socket_addresses) => socket_addresses,
            Err(reason) => {
                last_reason = reason;
                continue;
            }
        };
        for address in socket_addresses {
            let mut try_tls = true;
            loop {
                if n_connections == CONNECTIONS_PER_BATCH_MAX || all_settled(&outcomes) {
                    break 'hops;
                }
                n_connections += 1;
                match Session::open(config, hop, address, try_tls).await {
                    Ok(session) => {
                        tracing::debug!(peer = %session.peer, tls = session.tls, "relay session open");
                        if let Err(Broken(reason)) =
                            run_session(session, batch, &mut outcomes).await
                        {
                            last_reason = reason;
                        }
                        break;
                    }
                    Err(failure) => {
                        tracing::debug!(reason = %failure.reason, "relay session failed to open");
                        last_reason = failure.reason;
                        if !(failure.tls_failed && try_tls) {
                            break;
                        }
                        try_tls = false;
                    }
                }
            }
        }
    }
    settle_all(
        outcomes,
        &RecipientOutcome::Deferred {
            reason: last_reason,
        },
    )
}

fn all_settled(outcomes: &[Vec<Option<RecipientOutcome>>]) -> bool {
    outcomes.iter().flatten().all(Option::is_some)
}

/// Fills every unsettled recipient with `outcome` and drops the `Option`s.
fn settle_all(
    outcomes: Vec<Vec<Option<RecipientOutcome>>>,
    outcome: &RecipientOutcome,
) -> Vec<Vec<RecipientOutcome>> {
    outcomes
        .into_iter()
        .map(|message| {
            message
                .into_iter()
                .map(|recipient| recipient.unwrap_or_else(|| outcome.clone()))
                .collect()
        })
        .collect()
}

/// Sends every message with unsettled recipients over `session`, then QUIT.
async fn run_session(
    mut session: Session,
    batch: &[OutboundMessage<'_>],
    outcomes: &mut [Vec<Option<RecipientOutcome>>],
) -> Result<(), Broken> {
    let mut transaction_open = false;
    for (outbound, message_outcomes) in batch.iter().zip(outcomes.iter_mut()) {
        if message_outcomes.iter().all(Option::is_some) {
            continue;
        }
        if transaction_open {
            // RFC 5321 §4.1.1.5: a clean slate for the next message, whatever the last
            // one's state; a server that will not reset gets no further messages.
            let reply = session.command(b"RSET\r\n").await?;
            if reply.class() != 2 {
                return Err(Broken(format!(
                    "{} refused RSET: {}",
                    session.peer,
                    reply.diagnostic()
                )));
            }
        }
        transaction_open = true;
        send_message(&mut session, outbound, message_outcomes).await?;
    }
    session.quit().await;
    Ok(())
}

/// One mail transaction (MAIL, one RCPT per unsettled recipient, DATA). Settles the
/// recipients it learns about; `Err` means the connection is unusable and the
/// recipients still unsettled may go to another host.
async fn send_message(
    session: &mut Session,
    outbound: &OutboundMessage<'_>,
    outcomes: &mut [Option<RecipientOutcome>],
) -> Result<(), Broken> {
    let envelope = outbound.envelope;
    let message = outbound.message;
    let unsettled: Vec<usize> = (0..outcomes.len())
        .filter(|&idx| outcomes[idx].is_none())
        .collect();
    let settle = |outcomes: &mut [Option<RecipientOutcome>], outcome: &RecipientOutcome| {
        for &recipient_idx in &unsettled {
            outcomes[recipient_idx] = Some(outcome.clone());
        }
    };

    if let Some(size_max) = session.extensions.size
        && size_max > 0
        && message.len() as u64 > size_max
    {
        let reason = format!(
            "message of {} bytes exceeds the {size_max} bytes {} accepts",
            message.len(),
            session.peer
        );
        settle(
            outcomes,
            &RecipientOutcome::Failed {
                reason,
                status: "5.3.4".to_string(),
            },
        );
        return Ok(());
    }
    let needs_utf8 = envelope
        .sender
        .iter()
        .chain(&envelope.recipients)
        .any(|address| !address.as_str().is_ascii());
    if needs_utf8 && !session.extensions.smtp_utf8 {
        let reason = format!(
            "{} does not offer SMTPUTF8, needed by a non-ASCII address",
            session.peer
        );
        settle(
            outcomes,
            &RecipientOutcome::Failed {
                reason,
                status: "5.6.7".to_string(),
            },
        );
        return Ok(());
    }

    let mut mail_from = format!(
        "MAIL FROM:<{}>",
        envelope.sender.as_ref().map(Address::as_str).unwrap_or("")
    );
    if session.extensions.size.is_some() {
        mail_from.push_str(&format!(" SIZE={}", message.len()));
    }
    if session.extensions.eight_bit_mime && !message.is_ascii() {
        mail_from.push_str(" BODY=8BITMIME");
    }
    if needs_utf8 {
        mail_from.push_str(" SMTPUTF8");
    }
    mail_from.push_str("\r\n");
    let reply = session.command(mail_from.as_bytes()).await?;
    if reply.class() != 2 {
        // A refused sender refuses every recipient of the message alike.
        settle(outcomes, &RecipientOutcome::from_reply(&reply));
        return Ok(());
    }

    let mut accepted: Vec<usize> = Vec::with_capacity(unsettled.len());
    for &recipient_idx in &unsettled {
        let recipient = &envelope.recipients[recipient_idx];
        let reply = session
            .command(format!("RCPT TO:<{recipient}>\r\n").as_bytes())
            .await?;
        if reply.class() == 2 {
            accepted.push(recipient_idx);
        } else {
            outcomes[recipient_idx] = Some(RecipientOutcome::from_reply(&reply));
        }
    }
    if accepted.is_empty() {
        return Ok(());
    }

    let reply = session.command(b"DATA\r\n").await?;
    if reply.code != 354 {
        let outcome = if reply.class() == 2 {
            // A 2xx to DATA is no permission to send the message.
            RecipientOutcome::Deferred {
                reason: reply.diagnostic(),
            }
        } else {
            RecipientOutcome::from_reply(&reply)
        };
        for &recipient_idx in &accepted {
            outcomes[recipient_idx] = Some(outcome.clone());
        }
        return Ok(());
    }
    let outcome = match session.send_data(message).await {
        Ok(reply) => RecipientOutcome::from_reply(&reply),
        Err(Broken(reason)) => {
            // The receiver may or may not hold the message now; defer rather than
            // let another host receive it a second time in this same attempt.
            let reason = format!("{reason} (after the message was sent)");
            for &recipient_idx in &accepted {
                outcomes[recipient_idx] = Some(RecipientOutcome::Deferred {
                    reason: reason.clone(),
                });
            }
            return Err(Broken(reason));
        }
    };
    for &recipient_idx in &accepted {
        outcomes[recipient_idx] = Some(outcome.clone());
    }
    Ok(())
}
