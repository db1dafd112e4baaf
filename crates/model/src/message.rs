//! Immutable messages and their unique ids.

use std::fmt;
use std::str::FromStr;

/// The unique, immutable name of one stored message; also its POP3 UIDL.
///
/// 128 bits: the upper 48 are the arrival time in milliseconds since the Unix
/// epoch, the lower 80 are random. Ordering by id is therefore arrival order (to the
/// millisecond), which gives POP3 a stable message numbering, and collisions need
/// two messages in the same millisecond drawing the same 80 random bits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u128);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a message id is 32 lowercase hexadecimal digits")]
pub struct MessageIdError;

impl MessageId {
    pub fn new(arrival_ms: u64, random: u128) -> MessageId {
        let time = u128::from(arrival_ms & ((1 << 48) - 1)) << 80;
        MessageId(time | (random & ((1u128 << 80) - 1)))
    }

    pub fn generate(arrival_ms: u64) -> MessageId {
        MessageId::new(arrival_ms, rand::random::<u128>())
    }

    pub fn from_u128(raw: u128) -> MessageId {
        MessageId(raw)
    }

    pub fn as_u128(self) -> u128 {
        self.0
    }

    pub fn arrival_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = MessageIdError;
    fn from_str(text: &str) -> Result<MessageId, MessageIdError> {
        let well_formed =
            text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(MessageIdError);
        }
        u128::from_str_radix(text, 16)
            .map(MessageId)
            .map_err(|_| MessageIdError)
    }
}

impl serde::Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<MessageId, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One stored message: the exact octets delivered (CRLF line ends, dot-unstuffed,
/// trace headers included). Never modified after it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub body: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips_and_orders_by_arrival() {
        let early = MessageId::new(1_000, u128::MAX);
        let late = MessageId::new(1_001, 0);
        assert!(early < late);
        assert_eq!(early.arrival_ms(), 1_000);
        for id in [early, late, MessageId::generate(123_456)] {
            let text = id.to_string();
            assert_eq!(text.len(), 32);
            assert_eq!(text.parse::<MessageId>(), Ok(id));
        }
    }

    #[test]
    fn refuses_malformed_ids() {
        for text in [
            "",
            "abc",
            &"G".repeat(32),
            &"A".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000000",
        ] {
            assert_eq!(text.parse::<MessageId>(), Err(MessageIdError), "{text:?}");
        }
    }
}
