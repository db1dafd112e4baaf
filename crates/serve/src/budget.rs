//! The per-client connection budget (docs/DESIGN.md §10, "Budgets"): how many
//! connections one client address may hold at once, with trusted networks exempt.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Postfix's anvil default (`smtpd_client_connection_count_limit`): a client
/// needs no more at once, and one address cannot take the node's whole
/// connection limit.
pub const CONNECTIONS_PER_CLIENT_MAX_DEFAULT: usize = 50;

/// One network: the addresses that share the first `prefix_bits` bits of `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub base: IpAddr,
    pub prefix_bits: u8,
}

impl Network {
    pub const IPV4_LOOPBACK: Network = Network {
        base: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
        prefix_bits: 8,
    };
    pub const IPV6_LOOPBACK: Network = Network {
        base: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        prefix_bits: 128,
    };

    /// An IPv4-mapped IPv6 address counts as the IPv4 address it maps, so a
    /// dual-stack listener treats a client the same either way.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.base, address.to_canonical()) {
            (IpAddr::V4(base), IpAddr::V4(address)) => {
                prefix_matches(&base.octets(), &address.octets(), self.prefix_bits)
            }
            (IpAddr::V6(base), IpAddr::V6(address)) => {
                prefix_matches(&base.octets(), &address.octets(), self.prefix_bits)
            }
            _ => false,
        }
    }
}

fn prefix_matches(base: &[u8], address: &[u8], prefix_bits: u8) -> bool {
    let prefix_bits = usize::from(prefix_bits).min(base.len() * 8);
    let (n_whole_bytes, n_rest_bits) = (prefix_bits / 8, prefix_bits % 8);
    if base[..n_whole_bytes] != address[..n_whole_bytes] {
        return false;
    }
    if n_rest_bits == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - n_rest_bits);
    base[n_whole_bytes] & mask == address[n_whole_bytes] & mask
}

/// The per-client budget of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientBudget {
    /// Connections one client address may hold at once; the one after them gets
    /// the shell's [`crate::Shell::client_refusal`].
    pub connections_per_client_max: usize,
    /// Clients no per-client budget applies to, as Postfix exempts `$mynetworks`:
    /// by default loopback only, so local tools and benchmarks are never throttled.
    pub trusted_networks: Vec<Network>,
}

impl Default for ClientBudget {
    fn default() -> ClientBudget {
        ClientBudget {
            connections_per_client_max: CONNECTIONS_PER_CLIENT_MAX_DEFAULT,
            trusted_networks: vec![Network::IPV4_LOOPBACK, Network::IPV6_LOOPBACK],
        }
    }
}

impl ClientBudget {
    pub fn is_trusted(&self, client: IpAddr) -> bool {
        self.trusted_networks
            .iter()
            .any(|network| network.contains(client))
    }
}

/// The connections each untrusted client holds now. Entries leave the map when
/// their count falls to zero, so its size is bounded by the open connections.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientCounts {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its client; dropping it gives it back.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

impl ClientCounts {
    /// A slot for `client`, or `None` when it already holds `max` connections.
    pub(crate) fn try_take(&self, client: IpAddr, max: usize) -> Option<ClientSlot> {
        let client = client.to_canonical();
        let mut counts = self.counts.lock().expect("client counts lock");
        let count = counts.entry(client).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: self.counts.clone(),
            client,
        })
    }

    #[cfg(test)]
    pub(crate) fn n_clients(&self) -> usize {
        self.counts.lock().expect("client counts lock").len()
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("client counts lock");
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses() {
        let table: [(&str, u8, &str, bool); 9] = [
            ("127.0.0.0", 8, "127.3.4.5", true),
            ("127.0.0.0", 8, "128.0.0.1", false),
            ("127.0.0.0", 8, "::ffff:127.0.0.1", true),
            ("::1", 128, "::1", true),
            ("::1", 128, "::2", false),
            ("10.1.0.0", 12, "10.15.255.255", true),
            ("10.1.0.0", 12, "10.16.0.0", false),
            ("0.0.0.0", 0, "203.0.113.9", true),
            ("10.0.0.0", 8, "::a00:1", false),
        ];
        for (base, prefix_bits, address, expected) in table {
            let network = Network {
                base: base.parse().unwrap(),
                prefix_bits,
            };
            assert_eq!(
                network.contains(address.parse().unwrap()),
                expected,
                "{base}/{prefix_bits} {address}"
            );
        }
        let budget = ClientBudget::default();
        assert!(budget.is_trusted("::1".parse().unwrap()));
        assert!(!budget.is_trusted("192.0.2.7".parse().unwrap()));
    }

    /// Goal: a client gets at most `max` slots, a freed slot can be taken again,
    /// other clients are counted apart, and a client without slots leaves the map.
    #[test]
    fn slots_are_counted_per_client_and_given_back() {
        let counts = ClientCounts::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = counts.try_take(a, 2).unwrap();
        let _second = counts.try_take(a, 2).unwrap();
        assert!(counts.try_take(a, 2).is_none());
        assert!(
            counts
                .try_take("::ffff:192.0.2.1".parse().unwrap(), 2)
                .is_none(),
            "the mapped form is the same client"
        );
        let other = counts.try_take(b, 2).unwrap();
        drop(first);
        let _again = counts.try_take(a, 2).unwrap();
        drop(other);
        assert_eq!(counts.n_clients(), 1);
    }
}
