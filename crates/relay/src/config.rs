//! The `[relay]` table of the configuration and the retry policy derived from it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::RelayError;
use crate::limits::{
    HOST_BYTES_MAX, LIFETIME_S_MAX, RETRY_JITTER_PERCENT_MAX, RETRY_S_MAX, ROUTES_MAX,
    TIMEOUT_S_MAX,
};

/// The `[relay]` table (docs/DESIGN.md §12). Missing keys take the defaults below, unknown
/// keys are refused so that a misspelt `retry_max_s` does not silently do nothing.
///
/// Deserialising checks only the shape; call [`RelayConfig::validate`] before use,
/// which checks every value against its limit in [`crate::limits`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Fixed next hops per recipient domain (lower-case domain → `HOST:PORT`). A route
    /// wins over the smarthost and over DNS, which is how two test rings find each other.
    pub routes: BTreeMap<String, String>,
    /// `HOST:PORT` that receives all mail without a route, instead of DNS MX.
    pub smarthost: Option<String>,
    /// The name we give in EHLO and in DSNs (`Reporting-MTA`, `MAILER-DAEMON@`). The
    /// binary should set it to the node's public name; receivers check it.
    pub hostname: String,
    /// The port of hosts found through DNS MX or A/AAAA: 25 (RFC 5321 §4.5.4.2)
    /// except where a test points DNS at a server on loopback.
    pub mx_port: u16,
    /// How long to wait for a TCP connection to one address.
    pub connect_timeout_s: u64,
    /// How long to wait for the reply to one command (greeting, EHLO, MAIL, RCPT,
    /// RSET, STARTTLS), RFC 5321 §4.5.3.2 asks for 5 minutes.
    pub command_timeout_s: u64,
    /// How long writing the message and waiting for the reply to its final dot may
    /// take; RFC 5321 §4.5.3.2.6 asks for 10 minutes for the reply.
    pub data_timeout_s: u64,
    /// The delay after the first failed attempt.
    pub retry_first_s: u64,
    /// The longest delay between two attempts; the delay doubles up to it.
    pub retry_max_s: u64,
    /// How long after its arrival an entry is given up and bounced (5 days, as
    /// Postfix's `maximal_queue_lifetime`).
    pub lifetime_s: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            routes: BTreeMap::new(),
            smarthost: None,
            hostname: "localhost".to_string(),
            mx_port: crate::route::SMTP_PORT,
            connect_timeout_s: 30,
            command_timeout_s: 300,
            data_timeout_s: 600,
            retry_first_s: 60,
            retry_max_s: 3600,
            lifetime_s: 432_000,
        }
    }
}

/// A next hop written as `HOST:PORT` (`[v6]:PORT` for an IPv6 literal).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// A DNS name or an IP literal without brackets.
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `HOST:PORT`; `None` for anything else, including a missing or zero port.
    pub fn parse(text: &str) -> Option<HostPort> {
        if text.is_empty() || text.len() > HOST_BYTES_MAX {
            return None;
        }
        let (host, port) = text.rsplit_once(':')?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']')?,
            None if host.contains(':') => return None,
            None => host,
        };
        let port: u16 = port.parse().ok()?;
        let host_valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
        if port == 0 || !host_valid {
            return None;
        }
        Some(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl RelayConfig {
    /// Checks every value against its limit and the relations between them.
    pub fn validate(&self) -> Result<(), RelayError> {
        let bad = |key: &str, reason: String| {
            Err(RelayError::BadConfig {
                key: key.to_string(),
                reason,
            })
        };
        if self.routes.len() > ROUTES_MAX {
            return bad("routes", format!("more than {ROUTES_MAX} entries"));
        }
        for (domain, hop) in &self.routes {
            let domain_valid = !domain.is_empty()
                && domain.len() <= HOST_BYTES_MAX
                && *domain == domain.to_lowercase()
                && !domain.split('.').any(str::is_empty);
            if !domain_valid {
                return bad(
                    "routes",
                    format!("{domain:?} is not a lower-case domain name"),
                );
            }
            if HostPort::parse(hop).is_none() {
                return bad("routes", format!("{hop:?} for {domain} is not HOST:PORT"));
            }
        }
        if let Some(smarthost) = &self.smarthost
            && HostPort::parse(smarthost).is_none()
        {
            return bad("smarthost", format!("{smarthost:?} is not HOST:PORT"));
        }
        let hostname_valid = !self.hostname.is_empty()
            && self.hostname.len() <= HOST_BYTES_MAX
            && self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !hostname_valid {
            return bad(
                "hostname",
                format!("{:?} is not a host name", self.hostname),
            );
        }
        if self.mx_port == 0 {
            return bad("mx_port", "must not be 0".to_string());
        }
        for (key, value) in [
            ("connect_timeout_s", self.connect_timeout_s),
            ("command_timeout_s", self.command_timeout_s),
            ("data_timeout_s", self.data_timeout_s),
        ] {
            if !(1..=TIMEOUT_S_MAX).contains(&value) {
                return bad(key, format!("must be within 1..={TIMEOUT_S_MAX}"));
            }
        }
        if !(1..=RETRY_S_MAX).contains(&self.retry_first_s) {
            return bad("retry_first_s", format!("must be within 1..={RETRY_S_MAX}"));
        }
        if !(self.retry_first_s..=RETRY_S_MAX).contains(&self.retry_max_s) {
            return bad(
                "retry_max_s",
                format!("must be within retry_first_s..={RETRY_S_MAX}"),
            );
        }
        if !(self.retry_first_s..=LIFETIME_S_MAX).contains(&self.lifetime_s) {
            return bad(
                "lifetime_s",
                format!("must be within retry_first_s..={LIFETIME_S_MAX}"),
            );
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_s)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout_s)
    }

    pub fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.data_timeout_s)
    }

    /// How long to wait before the next attempt, after `n_attempts` failed ones.
    ///
    /// The delay is `retry_first_s · 2^(n_attempts - 1)`, capped at `retry_max_s`,
    /// minus a jitter of up to [`RETRY_JITTER_PERCENT_MAX`] percent so that entries
    /// deferred together spread out. `jitter_permille` (0..=1000) is the caller's
    /// random draw, so that this function stays deterministic and testable; no
    /// attempt yet (`n_attempts == 0`) means no wait.
    pub fn retry_delay(&self, n_attempts: u32, jitter_permille: u32) -> Duration {
        assert!(
            jitter_permille <= 1000,
            "jitter_permille out of range: {jitter_permille}"
        );
        if n_attempts == 0 {
            return Duration::ZERO;
        }
        // 2^(n - 1) overflows past 63 doublings; the cap is reached long before.
        let doublings = (n_attempts - 1).min(40);
        let delay_ms_uncapped = self
            .retry_first_s
            .saturating_mul(1000)
            .saturating_mul(1u64 << doublings);
        let delay_ms = delay_ms_uncapped.min(self.retry_max_s.saturating_mul(1000));
        let jitter_ms =
            delay_ms * RETRY_JITTER_PERCENT_MAX * u64::from(jitter_permille) / (100 * 1000);
        Duration::from_millis(delay_ms - jitter_ms)
    }

    /// Whether an entry that arrived at `created_ms` (Unix milliseconds) has outlived
    /// `lifetime_s` at `now_ms` and must be bounced instead of retried.
    pub fn expired(&self, created_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(created_ms) >= self.lifetime_s.saturating_mul(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_keys_and_unknown_keys_are_refused() {
        let config: RelayConfig = toml::from_str("smarthost = \"mx.test:2525\"").unwrap();
        assert_eq!(config.smarthost.as_deref(), Some("mx.test:2525"));
        assert_eq!(config.retry_first_s, 60);
        assert_eq!(config.retry_max_s, 3600);
        assert_eq!(config.lifetime_s, 432_000);
        config.validate().unwrap();

        let text = "routes = { \"b.test\" = \"127.0.0.1:2525\" }\nretry_first_s = 5";
        let config: RelayConfig = toml::from_str(text).unwrap();
        assert_eq!(config.routes["b.test"], "127.0.0.1:2525");
        assert_eq!(config.retry_first_s, 5);
        config.validate().unwrap();

        // As the binary reads it: a `[relay]` table in the node's configuration file.
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            relay: RelayConfig,
        }
        let file: File = toml::from_str("[relay]\nhostname = \"relay.a.test\"\n").unwrap();
        assert_eq!(file.relay.hostname, "relay.a.test");
        assert_eq!(file.relay.lifetime_s, 432_000);
        let file: File = toml::from_str("").unwrap();
        assert_eq!(file.relay, RelayConfig::default());

        let misspelt = toml::from_str::<RelayConfig>("retry_maximum_s = 10");
        assert!(misspelt.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn validate_refuses_values_past_their_limits() {
        type Spoil = fn(&mut RelayConfig);
        let cases: [(&str, Spoil); 8] = [
            ("routes", |c| {
                c.routes.insert("B.test".into(), "h:25".into());
            }),
            ("routes", |c| {
                c.routes.insert("b.test".into(), "h".into());
            }),
            ("smarthost", |c| c.smarthost = Some("h:0".into())),
            ("hostname", |c| c.hostname = "a b".into()),
            ("mx_port", |c| c.mx_port = 0),
            ("data_timeout_s", |c| c.data_timeout_s = 0),
            ("retry_max_s", |c| c.retry_max_s = c.retry_first_s - 1),
            ("lifetime_s", |c| c.lifetime_s = LIFETIME_S_MAX + 1),
        ];
        for (key, spoil) in cases {
            let mut config = RelayConfig::default();
            spoil(&mut config);
            match config.validate() {
                Err(RelayError::BadConfig { key: found, .. }) => assert_eq!(found, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn host_port_parses_names_and_literals() {
        let parsed = |text| HostPort::parse(text).map(|hop| hop.to_string());
        assert_eq!(parsed("MX.b.test:25").as_deref(), Some("mx.b.test:25"));
        assert_eq!(parsed("127.0.0.1:2525").as_deref(), Some("127.0.0.1:2525"));
        assert_eq!(parsed("[::1]:25").as_deref(), Some("[::1]:25"));
        for bad in [
            "",
            "host",
            "host:",
            ":25",
            "host:70000",
            "::1:25",
            "a b:25",
            "h:x",
        ] {
            assert_eq!(parsed(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_delay_doubles_from_first_to_max_and_jitter_only_shortens() {
        let config = RelayConfig::default();
        let seconds = |n, jitter| config.retry_delay(n, jitter).as_secs_f64();
        assert_eq!(seconds(0, 0), 0.0);
        assert_eq!(seconds(1, 0), 60.0);
        assert_eq!(seconds(2, 0), 120.0);
        assert_eq!(seconds(6, 0), 1920.0);
        assert_eq!(seconds(7, 0), 3600.0);
        assert_eq!(seconds(u32::MAX, 0), 3600.0);
        assert_eq!(seconds(1, 1000), 54.0);
        assert_eq!(seconds(7, 500), 3420.0);
        for n_attempts in 1..100 {
            for jitter in [0, 1, 999, 1000] {
                let delay = seconds(n_attempts, jitter);
                assert!((54.0..=3600.0).contains(&delay), "{n_attempts} {jitter}");
            }
        }
    }

    #[test]
    fn expired_after_exactly_the_lifetime() {
        let config = RelayConfig {
            lifetime_s: 10,
            ..RelayConfig::default()
        };
        assert!(!config.expired(1_000, 10_999));
        assert!(config.expired(1_000, 11_000));
        // A clock that went backwards does not expire anything.
        assert!(!config.expired(5_000, 1_000));
    }
}
