//! FETCH responses (RFC 9051 §7.5.2): plain items, body sections with partials,
//! ENVELOPE and BODYSTRUCTURE.
//!
//! MIME structure comes from `mail-parser`, which records where each part's
//! header and body lie in the original octets. Sections are cut from those
//! octets, never from decoded text, so `BODY[]` returns exactly what was stored.

use mail_parser::{Address, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use crate::parser::{FetchItem, Section, SectionText};
use crate::response::{push_literal, push_nstring, push_string};
use crate::selected::{Entry, write_flags};

/// Whether any item needs the message's octets.
pub fn needs_body(items: &[FetchItem]) -> bool {
    items.iter().any(|item| {
        matches!(
            item,
            FetchItem::Envelope | FetchItem::BodyStructure { .. } | FetchItem::Body { .. }
        )
    })
}

/// RFC 9051 §6.4.5: `BODY[...]` without `.PEEK` sets `\Seen`.
pub fn sets_seen(items: &[FetchItem]) -> bool {
    items
        .iter()
        .any(|item| matches!(item, FetchItem::Body { peek: false, .. }))
}

/// Appends `* seq FETCH (...)` for one message. `body` is `None` when no item
/// needs it or the store no longer has the message; body items are then `NIL`.
pub fn render<Id>(
    out: &mut Vec<u8>,
    seq: usize,
    entry: &Entry<Id>,
    items: &[FetchItem],
    body: Option<&[u8]>,
) {
    let parsed = body.and_then(|body| MessageParser::default().parse(body));
    out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    for (item_idx, item) in items.iter().enumerate() {
        if item_idx > 0 {
            out.push(b' ');
        }
        match item {
            FetchItem::Uid => out.extend_from_slice(format!("UID {}", entry.uid).as_bytes()),
            FetchItem::Flags => {
                let mut line = String::new();
                write_flags(&mut line, &entry.flags);
                out.extend_from_slice(line.as_bytes());
            }
            FetchItem::Rfc822Size => {
                out.extend_from_slice(format!("RFC822.SIZE {}", entry.size).as_bytes())
            }
            FetchItem::InternalDate => out.extend_from_slice(
                format!("INTERNALDATE \"{}\"", internal_date(entry.internal_date_s)).as_bytes(),
            ),
            FetchItem::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                match &parsed {
                    Some(message) => push_envelope(out, message),
                    None => out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
                }
            }
            FetchItem::BodyStructure { extensible } => {
                out.extend_from_slice(if *extensible {
                    b"BODYSTRUCTURE "
                } else {
                    b"BODY "
                });
                match &parsed {
                    Some(message) => push_body_structure(out, message, 0, *extensible, 0),
                    None => out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)"),
                }
            }
            FetchItem::Body {
                section,
                partial,
                legacy,
                ..
            } => {
                match legacy {
                    Some(name) => out.extend_from_slice(name.as_bytes()),
                    None => {
                        out.extend_from_slice(b"BODY[");
                        out.extend_from_slice(section_name(section).as_bytes());
                        out.push(b']');
                        if let Some((start, _)) = partial {
                            out.extend_from_slice(format!("<{start}>").as_bytes());
                        }
                    }
                }
                out.push(b' ');
                let octets = match (body, &parsed) {
                    (Some(body), Some(message)) => Some(section_octets(body, message, section)),
                    (Some(body), None)
                        if section.part.is_empty() && section.text == SectionText::Whole =>
                    {
                        Some(body.to_vec())
                    }
                    (Some(_), None) => Some(Vec::new()),
                    (None, _) => None,
                };
                match octets {
                    Some(octets) => {
                        let octets = match partial {
                            Some((start, len)) => {
                                let start_idx = (*start as usize).min(octets.len());
                                let end_idx =
                                    start_idx.saturating_add(*len as usize).min(octets.len());
                                octets[start_idx..end_idx].to_vec()
                            }
                            None => octets,
                        };
                        push_literal(out, &octets);
                    }
                    None => out.extend_from_slice(b"NIL"),
                }
            }
        }
    }
    out.extend_from_slice(b")\r\n");
}

/// RFC 9051 §9 `date-time`, in UTC.
pub fn internal_date(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .format("%d-%b-%Y %H:%M:%S +0000")
        .to_string()
}

fn section_name(section: &Section) -> String {
    let mut name: Vec<String> = section.part.iter().map(u32::to_string).collect();
    let text = match &section.text {
        SectionText::Whole => None,
        SectionText::Header => Some("HEADER".to_owned()),
        SectionText::Text => Some("TEXT".to_owned()),
        SectionText::Mime => Some("MIME".to_owned()),
        SectionText::HeaderFields { names, not } => {
            let mut text = if *not {
                "HEADER.FIELDS.NOT ("
            } else {
                "HEADER.FIELDS ("
            }
            .to_owned();
            let names: Vec<String> = names
                .iter()
                .map(|name| {
                    let mut quoted = Vec::new();
                    push_string(&mut quoted, name.to_ascii_uppercase().as_bytes());
                    String::from_utf8_lossy(&quoted).into_owned()
                })
                .collect();
            text.push_str(&names.join(" "));
            text.push(')');
            Some(text)
        }
    };
    name.extend(text);
    name.join(".")
}

/// The message and part a section path leads to (RFC 9051 §6.4.5): numbers go
/// down multiparts, into encapsulated messages, and `1` names the body of a
/// single-part entity.
fn resolve<'m>(message: &'m Message<'m>, path: &[u32]) -> Option<(&'m Message<'m>, usize)> {
    let mut current: &'m Message<'m> = message;
    let mut part_idx = 0usize;
    for (step_idx, number) in path.iter().enumerate() {
        if step_idx > 0
            && let PartType::Message(nested) = &current.parts.get(part_idx)?.body
        {
            current = nested;
            part_idx = 0;
        }
        match &current.parts.get(part_idx)?.body {
            PartType::Multipart(children) => {
                part_idx = *children.get((*number as usize).checked_sub(1)?)? as usize;
            }
            _ if *number == 1 => {}
            _ => return None,
        }
    }
    Some((current, part_idx))
}

fn slice(raw: &[u8], start: u32, end: u32) -> &[u8] {
    let end_idx = (end as usize).min(raw.len());
    let start_idx = (start as usize).min(end_idx);
    &raw[start_idx..end_idx]
}

/// The octets of a section; empty when the path names nothing.
fn section_octets(body: &[u8], message: &Message<'_>, section: &Section) -> Vec<u8> {
    let Some((owner, part_idx)) = resolve(message, &section.part) else {
        return Vec::new();
    };
    let raw = owner.raw_message.as_ref();
    let part = &owner.parts[part_idx];
    // HEADER and TEXT of a part that is an encapsulated message mean the inner
    // message's header and text; at the top they mean the message's own.
    let (inner, inner_raw): (&Message<'_>, &[u8]) = match (&part.body, section.part.is_empty()) {
        (_, true) => (owner, raw),
        (PartType::Message(nested), false) => (nested, nested.raw_message.as_ref()),
        _ => (owner, raw),
    };
    let root = &inner.parts[0];
    match &section.text {
        SectionText::Whole if section.part.is_empty() => body.to_vec(),
        SectionText::Whole => slice(raw, part.offset_body, part.offset_end).to_vec(),
        SectionText::Mime => slice(raw, part.offset_header, part.offset_body).to_vec(),
        SectionText::Header => slice(inner_raw, root.offset_header, root.offset_body).to_vec(),
        SectionText::Text => slice(inner_raw, root.offset_body, root.offset_end).to_vec(),
        SectionText::HeaderFields { names, not } => {
            let header = slice(inner_raw, root.offset_header, root.offset_body);
            header_fields(header, names, *not)
        }
    }
}

/// The header fields named (or, with `not`, all others), then the blank line.
fn header_fields(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    let mut line_start_idx = 0;
    while line_start_idx < header.len() {
        let line_end_idx = header[line_start_idx..]
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(header.len(), |lf_idx| line_start_idx + lf_idx + 1);
        let line = &header[line_start_idx..line_end_idx];
        line_start_idx = line_end_idx;
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let is_continuation = line
            .first()
            .is_some_and(|byte| *byte == b' ' || *byte == b'\t');
        if !is_continuation {
            let field_name = line.split(|&byte| byte == b':').next().unwrap_or_default();
            let named = names.iter().any(|name| {
                name.as_bytes()
                    .eq_ignore_ascii_case(field_name.trim_ascii())
            });
            keep = named != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// RFC 9051 §7.5.2 ENVELOPE. Date, subject and ids are the raw header values, as
/// the RFC asks; addresses are parsed.
fn push_envelope(out: &mut Vec<u8>, message: &Message<'_>) {
    let raw = |name: &str| {
        message
            .header_raw(name)
            .map(|value| value.trim().to_owned())
    };
    out.push(b'(');
    push_nstring(out, raw("Date").as_deref().map(str::as_bytes));
    out.push(b' ');
    push_nstring(out, raw("Subject").as_deref().map(str::as_bytes));
    let from = message.from();
    for (address, fallback) in [
        (from, None),
        (message.sender(), from),
        (message.reply_to(), from),
        (message.to(), None),
        (message.cc(), None),
        (message.bcc(), None),
    ] {
        out.push(b' ');
        push_addresses(out, address.or(fallback));
    }
    out.push(b' ');
    push_nstring(out, raw("In-Reply-To").as_deref().map(str::as_bytes));
    out.push(b' ');
    push_nstring(out, raw("Message-ID").as_deref().map(str::as_bytes));
    out.push(b')');
}

fn push_addresses(out: &mut Vec<u8>, address: Option<&Address<'_>>) {
    let push_one = |out: &mut Vec<u8>, name: Option<&str>, address: Option<&str>| {
        let address = address.unwrap_or_default();
        let (mailbox, host) = address.rsplit_once('@').unwrap_or((address, ""));
        out.push(b'(');
        push_nstring(out, name.map(str::as_bytes));
        out.extend_from_slice(b" NIL ");
        push_string(out, mailbox.as_bytes());
        out.push(b' ');
        push_string(out, host.as_bytes());
        out.push(b')');
    };
    match address {
        None => out.extend_from_slice(b"NIL"),
        Some(Address::List(list)) if list.is_empty() => out.extend_from_slice(b"NIL"),
        Some(Address::List(list)) => {
            out.push(b'(');
            for addr in list {
                push_one(out, addr.name(), addr.address());
            }
            out.push(b')');
        }
        Some(Address::Group(groups)) => {
            out.push(b'(');
            for group in groups {
                // RFC 9051 §7.5.2: a group is a start marker with its name in
                // the mailbox field, the members, and an end marker.
                out.extend_from_slice(b"(NIL NIL ");
                push_nstring(out, group.name.as_deref().map(str::as_bytes));
                out.extend_from_slice(b" NIL)");
                for addr in &group.addresses {
                    push_one(out, addr.name(), addr.address());
                }
                out.extend_from_slice(b"(NIL NIL NIL NIL)");
            }
            out.push(b')');
        }
    }
}

/// Nesting of BODYSTRUCTURE followed; deeper parts show as empty text, so a
/// hostile message cannot make the response recurse without bound.
const BODY_STRUCTURE_DEPTH_MAX: usize = 16;

/// RFC 9051 §7.5.2 BODYSTRUCTURE (with `extensible`, the multipart subtype's
/// parameters too) or BODY.
fn push_body_structure(
    out: &mut Vec<u8>,
    message: &Message<'_>,
    part_idx: usize,
    extensible: bool,
    depth: usize,
) {
    let Some(part) = message.parts.get(part_idx) else {
        out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        return;
    };
    if depth > BODY_STRUCTURE_DEPTH_MAX {
        out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        return;
    }
    let content_type = part.content_type();
    let subtype = content_type
        .and_then(|ct| ct.subtype())
        .map(str::to_ascii_uppercase);
    out.push(b'(');
    if let PartType::Multipart(children) = &part.body {
        for child in children {
            push_body_structure(out, message, *child as usize, extensible, depth + 1);
        }
        out.push(b' ');
        push_string(out, subtype.as_deref().unwrap_or("MIXED").as_bytes());
        if extensible {
            out.push(b' ');
            push_parameters(out, part);
        }
        out.push(b')');
        return;
    }
    let main_type = content_type
        .map(|ct| ct.ctype().to_ascii_uppercase())
        .unwrap_or_else(|| "TEXT".to_owned());
    let subtype = subtype.unwrap_or_else(|| {
        if main_type == "TEXT" {
            "PLAIN".to_owned()
        } else {
            "OCTET-STREAM".to_owned()
        }
    });
    push_string(out, main_type.as_bytes());
    out.push(b' ');
    push_string(out, subtype.as_bytes());
    out.push(b' ');
    push_parameters(out, part);
    out.push(b' ');
    push_nstring(out, part.content_id().map(str::as_bytes));
    out.push(b' ');
    push_nstring(out, part.content_description().map(str::as_bytes));
    out.push(b' ');
    let encoding = part
        .content_transfer_encoding()
        .unwrap_or("7BIT")
        .to_ascii_uppercase();
    push_string(out, encoding.as_bytes());
    let raw = message.raw_message.as_ref();
    let body = slice(raw, part.offset_body, part.offset_end);
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    // A last line without its line break still counts as a line.
    let n_lines = body.iter().filter(|&&byte| byte == b'\n').count()
        + usize::from(!body.is_empty() && !body.ends_with(b"\n"));
    match &part.body {
        PartType::Message(nested) if main_type == "MESSAGE" => {
            out.push(b' ');
            push_envelope(out, nested);
            out.push(b' ');
            push_body_structure(out, nested, 0, extensible, depth + 1);
            out.extend_from_slice(format!(" {n_lines}").as_bytes());
        }
        _ if main_type == "TEXT" => out.extend_from_slice(format!(" {n_lines}").as_bytes()),
        _ => {}
    }
    out.push(b')');
}

fn push_parameters(out: &mut Vec<u8>, part: &MessagePart<'_>) {
    let attributes = part
        .content_type()
        .and_then(|ct| ct.attributes())
        .unwrap_or_default();
    if attributes.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (attribute_idx, attribute) in attributes.iter().enumerate() {
        if attribute_idx > 0 {
            out.push(b' ');
        }
        push_string(out, attribute.name.to_ascii_uppercase().as_bytes());
        out.push(b' ');
        push_string(out, attribute.value.as_bytes());
    }
    out.push(b')');
}
