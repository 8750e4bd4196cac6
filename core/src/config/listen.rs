//! Listening addresses as operators write them: `localhost:4317`, `0.0.0.0:4317`, `[::]:4317`, `10.0.0.5:4317`,
//! `collector.internal:4317`, in the config and in flags alike.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest host name DNS allows.
const MAX_NAME_BYTES: usize = 253;

/// A `host:port` to listen on. The host is an IP address (IPv6 in brackets) or a name, resolved when the listener
/// is bound (by the binary, `tailscope serve`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl ListenAddr {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address itself when the host is an IP address; `None` for a name, which must be resolved.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.host {
            Host::Ip(ip) => Some(SocketAddr::new(*ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> ListenAddr {
        ListenAddr { host: Host::Ip(addr.ip()), port: addr.port() }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// Whether `name` can be a host name: dot-separated labels of letters, digits, `-` and `_` (container and service
/// names use it), none empty, longer than 63 bytes, or starting or ending with `-`.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.trim_end_matches('.').split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<ListenAddr, String> {
        let hint = "write host:port, e.g. 127.0.0.1:4317 (this machine), 0.0.0.0:4317 or [::]:4317 (every \
                    interface), localhost:4317";
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("{text:?} has no port; {hint}"));
        };
        let port: u16 = port.parse().map_err(|_| format!("{text:?}: the port must be a number 0..=65535; {hint}"))?;
        if host.is_empty() {
            // Go reads ":4317" as every interface; spelling that out keeps exposing the collector deliberate.
            return Err(format!("{text:?} has no host; {hint}"));
        }
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip = inner.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{text:?}: not an IPv6 address"))?;
            return Ok(ListenAddr { host: Host::Ip(IpAddr::V6(ip)), port });
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            // An IPv6 address must be in brackets, or its last group would read as the port.
            return match ip {
                IpAddr::V4(_) => Ok(ListenAddr { host: Host::Ip(ip), port }),
                IpAddr::V6(_) => Err(format!("{text:?}: put an IPv6 address in brackets, as in [::1]:4317")),
            };
        }
        if !is_host_name(host) {
            return Err(format!("{text:?}: {host:?} is neither an IP address nor a host name; {hint}"));
        }
        Ok(ListenAddr { host: Host::Name(host.to_ascii_lowercase()), port })
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ListenAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_with_ip_addresses_or_host_names() {
        for (text, shown, ip) in [
            ("127.0.0.1:4317", "127.0.0.1:4317", true),
            ("0.0.0.0:4317", "0.0.0.0:4317", true),
            ("[::]:4317", "[::]:4317", true),
            ("[::1]:0", "[::1]:0", true),
            ("localhost:4317", "localhost:4317", false),
            ("Collector.internal:4318", "collector.internal:4318", false),
            ("otel_collector:4317", "otel_collector:4317", false),
            ("host.:1", "host.:1", false),
        ] {
            let addr: ListenAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(addr.to_string(), shown);
            assert_eq!(addr.socket_addr().is_some(), ip, "{text}");
            assert_eq!(shown.parse::<ListenAddr>().unwrap(), addr, "what is shown reads back");
        }
        for (bad, says) in [
            ("localhost", "no port"),
            (":4317", "no host"),
            ("localhost:65536", "0..=65535"),
            ("localhost:http", "0..=65535"),
            ("::1:4317", "brackets"),
            ("[nope]:4317", "IPv6"),
            ("bad host:4317", "neither"),
            ("-bad:4317", "neither"),
            ("a..b:4317", "neither"),
            ("http://localhost:4317", "neither"),
        ] {
            let err = bad.parse::<ListenAddr>().expect_err(bad);
            assert!(err.contains(says) && err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        let long = format!("{}:1", "a.".repeat(200));
        assert!(long.parse::<ListenAddr>().is_err());
    }
}
