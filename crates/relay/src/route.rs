//! Where mail for a domain goes: a configured route, the smarthost, or DNS
//! (RFC 5321 §5.1: MX records by preference, the domain itself when it has none,
//! and no delivery at all for a null MX, RFC 7505).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use crate::config::{HostPort, RelayConfig};
use crate::limits::{ADDRESSES_PER_HOST_MAX, MX_HOSTS_MAX};
use crate::{RecipientOutcome, RelayError};

/// The port of SMTP relay between MTAs (RFC 5321 §4.5.4.2).
pub const SMTP_PORT: u16 = 25;

/// One MX record as the relay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// The exchange without its trailing dot; empty for a null MX (`0 .`).
    pub exchange: String,
}

/// Why a DNS question has no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    /// NXDOMAIN: the name does not exist, so mail to it can never be delivered.
    NoSuchDomain,
    /// A timeout, SERVFAIL or a network error: ask again later.
    Temporary(String),
}

/// The DNS questions the relay asks, behind a trait so that tests answer them
/// without a network and the node can share one caching resolver.
pub trait Resolver: Send + Sync {
    /// The MX records of `domain`; empty when the domain exists but has none.
    fn mx(&self, domain: &str) -> impl Future<Output = Result<Vec<MxRecord>, DnsFailure>> + Send;
    /// The A and AAAA addresses of `host`; empty when it exists but has none.
    fn ips(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, DnsFailure>> + Send;
}

/// The hosts to try for `domain`, best first: `[relay] routes`, else the smarthost,
/// else DNS MX. `Err` is the outcome for every recipient of the domain when there is
/// no host to try: a failure for a domain that does not exist, has neither MX nor
/// address records, or publishes a null MX; a deferral when DNS did not answer.
///
/// Equal preferences keep the resolver's order instead of being shuffled (RFC 5321
/// §5.1 asks for randomisation): the caller retries the whole list anyway, and a
/// deterministic order keeps tests and logs readable.
pub async fn route<R: Resolver>(
    config: &RelayConfig,
    resolver: &R,
    domain: &str,
) -> Result<Vec<HostPort>, RecipientOutcome> {
    let configured = config
        .routes
        .get(&domain.to_ascii_lowercase())
        .or(config.smarthost.as_ref());
    if let Some(hop) = configured {
        // `RelayConfig::validate` has parsed every route and the smarthost already.
        let hop = HostPort::parse(hop).expect("validated configuration");
        return Ok(vec![hop]);
    }
    let mut records = match resolver.mx(domain).await {
        Ok(records) => records,
        Err(DnsFailure::NoSuchDomain) => return Err(no_such_domain(domain)),
        Err(DnsFailure::Temporary(reason)) => {
            return Err(RecipientOutcome::Deferred {
                reason: format!("MX lookup for {domain} failed: {reason}"),
            });
        }
    };
    if records.iter().any(|record| record.exchange.is_empty()) {
        return Err(RecipientOutcome::Failed {
            reason: format!("domain {domain} accepts no mail (null MX, RFC 7505)"),
            status: "5.1.10".to_string(),
        });
    }
    if records.is_empty() {
        // The implicit MX (RFC 5321 §5.1): the domain's own address records.
        return match resolver.ips(domain).await {
            Ok(ips) if !ips.is_empty() => Ok(vec![HostPort {
                host: domain.to_ascii_lowercase(),
                port: config.mx_port,
            }]),
            Ok(_) | Err(DnsFailure::NoSuchDomain) => Err(no_such_domain(domain)),
            Err(DnsFailure::Temporary(reason)) => Err(RecipientOutcome::Deferred {
                reason: format!("address lookup for {domain} failed: {reason}"),
            }),
        };
    }
    records.sort_by_key(|record| record.preference);
    // RFC 5321 §5.1: when we are one of the MX hosts, only better ones may be tried,
    // or the message would come back to us and loop.
    let own_preference = records
        .iter()
        .find(|record| record.exchange.eq_ignore_ascii_case(&config.hostname))
        .map(|record| record.preference);
    if let Some(own_preference) = own_preference {
        records.retain(|record| record.preference < own_preference);
        if records.is_empty() {
            return Err(RecipientOutcome::Failed {
                reason: format!(
                    "mail for {domain} loops back to myself ({})",
                    config.hostname
                ),
                status: "5.4.6".to_string(),
            });
        }
    }
    let mut hops: Vec<HostPort> = Vec::new();
    for record in records {
        let hop = HostPort {
            host: record.exchange.to_ascii_lowercase(),
            port: config.mx_port,
        };
        if !hops.contains(&hop) && hops.len() < MX_HOSTS_MAX {
            hops.push(hop);
        }
    }
    Ok(hops)
}

fn no_such_domain(domain: &str) -> RecipientOutcome {
    RecipientOutcome::Failed {
        reason: format!("domain {domain} has no MX and no address records"),
        status: "5.1.2".to_string(),
    }
}

/// The socket addresses of one hop: an IP literal as it is, a name through the
/// resolver, at most [`ADDRESSES_PER_HOST_MAX`] of them.
pub async fn addresses<R: Resolver>(
    resolver: &R,
    hop: &HostPort,
) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = hop.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, hop.port)]);
    }
    match resolver.ips(&hop.host).await {
        Ok(ips) if ips.is_empty() => Err(format!("{} has no address records", hop.host)),
        Ok(ips) => Ok(ips
            .into_iter()
            .take(ADDRESSES_PER_HOST_MAX)
            .map(|ip| SocketAddr::new(ip, hop.port))
            .collect()),
        Err(DnsFailure::NoSuchDomain) => Err(format!("{} does not exist", hop.host)),
        Err(DnsFailure::Temporary(reason)) => {
            Err(format!("address lookup for {} failed: {reason}", hop.host))
        }
    }
}

/// The system's resolver (`/etc/resolv.conf` and `/etc/hosts`), through hickory.
#[derive(Clone)]
pub struct DnsResolver {
    inner: hickory_resolver::TokioResolver,
}

impl DnsResolver {
    /// Reads the system configuration; must run inside a tokio runtime.
    pub fn from_system_conf() -> Result<DnsResolver, RelayError> {
        let builder = hickory_resolver::TokioResolver::builder_tokio()
            .map_err(|err| RelayError::Resolver(err.to_string()))?;
        let inner = builder
            .build()
            .map_err(|err| RelayError::Resolver(err.to_string()))?;
        Ok(DnsResolver { inner })
    }
}

/// Asks for the fully qualified name, so that the search list of resolv.conf is
/// never appended to a recipient's domain.
fn fully_qualified(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn dns_failure(err: hickory_resolver::net::NetError) -> Result<(), DnsFailure> {
    if err.is_nx_domain() {
        Err(DnsFailure::NoSuchDomain)
    } else if err.is_no_records_found() {
        Ok(())
    } else {
        Err(DnsFailure::Temporary(err.to_string()))
    }
}

/// The resolver of a node whose system DNS configuration could not be read: routes
/// and the smarthost still work, and a domain that needs DNS is deferred (never
/// bounced) with the reason, until the node restarts with a working configuration.
pub struct NoResolver {
    pub reason: String,
}

impl Resolver for NoResolver {
    async fn mx(&self, _domain: &str) -> Result<Vec<MxRecord>, DnsFailure> {
        Err(DnsFailure::Temporary(self.reason.clone()))
    }

    async fn ips(&self, _host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        Err(DnsFailure::Temporary(self.reason.clone()))
    }
}

impl Resolver for DnsResolver {
    async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, DnsFailure> {
        let lookup = match self.inner.mx_lookup(fully_qualified(domain)).await {
            Ok(lookup) => lookup,
            Err(err) => return dns_failure(err).map(|()| Vec::new()),
        };
        let records = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                hickory_resolver::proto::rr::RData::MX(mx) => Some(MxRecord {
                    preference: mx.preference,
                    exchange: mx.exchange.to_ascii().trim_end_matches('.').to_string(),
                }),
                _ => None,
            })
            .collect();
        Ok(records)
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        match self.inner.lookup_ip(fully_qualified(host)).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(err) => dns_failure(err).map(|()| Vec::new()),
        }
    }
}
