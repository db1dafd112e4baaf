//! Identifiers, limits and configuration shared by every chordmail piece.
//!
//! This crate is the innermost ring of the dependency graph: it knows nothing of
//! sockets, storage or protocols. It holds
//! - [`RingKey`] and [`key_of_address`]: where an address lives on the Chord circle;
//! - [`limits`]: every bound on an input, as named constants with the unit last;
//! - [`Address`]: a validated, lower-cased mail address;
//! - [`date`]: the RFC 5322 date of mail headers;
//! - [`metrics`]: the node's counters, rendered by the admin API.

pub mod address;
pub mod date;
pub mod limits;
pub mod metrics;

pub use address::{Address, AddressError};

use sha2::{Digest, Sha256};

/// A position on the identifier circle `[0, 2^bits)`.
///
/// Ids are plain `u64`s; the number of bits in use travels with the ring
/// configuration, not with every id, so that ids stay `Copy` and cheap to compare.
pub type RingKey = u64;

/// The largest identifier space the ring supports (`--bits` 1..=64).
pub const RING_BITS_MAX: u32 = 64;

/// Reduces a full 64-bit hash to the identifier space of `bits` bits.
pub fn truncate_key(hash: u64, bits: u32) -> RingKey {
    assert!(
        (1..=RING_BITS_MAX).contains(&bits),
        "bits out of range: {bits}"
    );
    if bits == 64 {
        hash
    } else {
        hash & ((1u64 << bits) - 1)
    }
}

/// The 64-bit hash (first eight bytes of SHA-256, big-endian) of `bytes`.
///
/// SHA-256 rather than a fast hash because keys must be identical on every node,
/// every platform and every release: the hash is part of the on-disk format.
pub fn hash64(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("sha-256 has 32 bytes"))
}

/// The ring key under which all data of one mail address lives (docs/DESIGN.md §4).
pub fn key_of_address(address: &Address, bits: u32) -> RingKey {
    truncate_key(hash64(address.as_str().as_bytes()), bits)
}

/// The ring key of an outbound queue entry, from its 128-bit id: entries spread
/// over the ring independently of their sender and recipients.
pub fn key_of_outbound(id: u128, bits: u32) -> RingKey {
    let mut named = *b"outbound:0123456789abcdef";
    named[9..].copy_from_slice(&id.to_be_bytes());
    truncate_key(hash64(&named), bits)
}

/// The ring id of a node started without `--id`: the hash of its ring address.
pub fn key_of_node_addr(addr: &str, bits: u32) -> RingKey {
    truncate_key(hash64(addr.as_bytes()), bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_low_bits() {
        assert_eq!(truncate_key(0xffff_ffff_ffff_ffff, 3), 7);
        assert_eq!(truncate_key(0x10, 4), 0);
        assert_eq!(truncate_key(u64::MAX, 64), u64::MAX);
    }

    #[test]
    fn keys_ignore_address_case() {
        let a = Address::parse("Alice@Example.ORG").unwrap();
        let b = Address::parse("alice@example.org").unwrap();
        assert_eq!(key_of_address(&a, 64), key_of_address(&b, 64));
    }

    #[test]
    fn hash_is_stable() {
        // Part of the on-disk format: changing it strands every stored mailbox.
        assert_eq!(hash64(b""), 0xe3b0_c442_98fc_1c14);
    }
}
