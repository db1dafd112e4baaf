//! SEARCH (RFC 9051 §6.4.4) evaluated against the selected folder's messages.
//!
//! Text keys compare case-insensitively (ASCII) against the raw header fields
//! and, for BODY and TEXT, the decoded text parts as well as the raw octets, so a
//! quoted-printable or base64 body is found by its words.

use mail_parser::{Message, MessageParser};

use crate::parser::SearchKey;
use crate::selected::{Entry, has_flag};

/// Where a message stands in the folder, for sequence-set keys.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub seq: u32,
    pub n_messages: u32,
    pub largest_uid: u32,
}

/// Whether any key needs the message's octets.
pub fn needs_body(key: &SearchKey) -> bool {
    match key {
        SearchKey::Header(..) | SearchKey::Body(_) | SearchKey::Text(_) => true,
        SearchKey::And(keys) => keys.iter().any(needs_body),
        SearchKey::Or(left, right) => needs_body(left) || needs_body(right),
        SearchKey::Not(key) => needs_body(key),
        _ => false,
    }
}

fn contains_ignoring_case(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
}

const DAY_S: i64 = 86_400;

/// Whether `entry` matches `key`. `body` is the message's octets when the key
/// needs them (see [`needs_body`]) and the store still has the message.
pub fn matches<Id>(
    key: &SearchKey,
    context: &Context,
    entry: &Entry<Id>,
    body: Option<&[u8]>,
) -> bool {
    // Parsed once per message, however many text keys look at it.
    let parsed = body.and_then(|body| MessageParser::default().parse(body));
    let body = body.map(|raw| (raw, parsed.as_ref()));
    matches_parsed(key, context, entry, body)
}

fn matches_parsed<Id>(
    key: &SearchKey,
    context: &Context,
    entry: &Entry<Id>,
    body: Option<(&[u8], Option<&Message<'_>>)>,
) -> bool {
    let day = entry.internal_date_s.div_euclid(DAY_S);
    let recurse = |key: &SearchKey| matches_parsed(key, context, entry, body);
    match key {
        SearchKey::All => true,
        SearchKey::And(keys) => keys.iter().all(recurse),
        SearchKey::Or(left, right) => recurse(left) || recurse(right),
        SearchKey::Not(key) => !recurse(key),
        SearchKey::SequenceSet(set) => set.contains(context.seq, context.n_messages),
        SearchKey::Uid(set) => set.contains(entry.uid, context.largest_uid),
        SearchKey::Flag(flag, set) => has_flag(&entry.flags, flag) == *set,
        SearchKey::Before(date) => day < *date,
        SearchKey::On(date) => day == *date,
        SearchKey::Since(date) => day >= *date,
        SearchKey::Larger(size) => entry.size > u64::from(*size),
        SearchKey::Smaller(size) => entry.size < u64::from(*size),
        SearchKey::Header(name, value) => {
            let Some((_, Some(message))) = body else {
                return false;
            };
            message.parts[0].headers.iter().any(|header| {
                header.name.as_str().eq_ignore_ascii_case(name)
                    && (contains_ignoring_case(
                        slice(&message.raw_message, header.offset_start, header.offset_end),
                        value,
                    ) || header
                        .value
                        .as_text()
                        .is_some_and(|text| contains_ignoring_case(text.as_bytes(), value)))
            })
        }
        SearchKey::Body(value) | SearchKey::Text(value) => {
            let Some((raw, parsed)) = body else {
                return false;
            };
            let Some(message) = parsed else {
                return contains_ignoring_case(raw, value);
            };
            let root = &message.parts[0];
            let searched = if matches!(key, SearchKey::Text(_)) {
                raw
            } else {
                slice(raw, root.offset_body, root.offset_end)
            };
            contains_ignoring_case(searched, value)
                || (0..message.text_body.len())
                    .filter_map(|text_idx| message.body_text(text_idx))
                    .any(|text| contains_ignoring_case(text.as_bytes(), value))
        }
    }
}

fn slice(raw: &[u8], start: u32, end: u32) -> &[u8] {
    let end_idx = (end as usize).min(raw.len());
    let start_idx = (start as usize).min(end_idx);
    &raw[start_idx..end_idx]
}
