//! What one probe loop checks: an address and a fully resolved check.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use super::{CheckKind, CheckSpec};

/// Backends that share an address and a spec share one `Target`, and so one
/// probe loop and one health state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub address: IpAddr,
    pub spec: CheckSpec,
}

impl Target {
    /// Same address and same request, whatever the timing and thresholds: the
    /// state of one is evidence for the other.
    #[must_use]
    pub fn same_probe(&self, other: &Self) -> bool {
        let (a, b) = (&self.spec, &other.spec);
        self.address == other.address
            && a.kind == b.kind
            && a.port == b.port
            && a.path == b.path
            && a.host == b.host
            && a.expect_status == b.expect_status
            && a.tls_verify == b.tls_verify
    }

    /// Address and port probed, e.g. `10.0.0.11:80`: the metrics' `target` label.
    #[must_use]
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.spec.port)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = self.endpoint();
        match self.spec.kind {
            CheckKind::Tcp => write!(f, "tcp://{endpoint}"),
            CheckKind::Http => write!(f, "http://{endpoint}{}", self.spec.path),
            CheckKind::Https => write!(f, "https://{endpoint}{}", self.spec.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::test_server::spec;

    #[test]
    fn targets_display_as_urls() {
        let mut t = Target { address: "::1".parse().unwrap(), spec: spec(CheckKind::Https, 8443) };
        assert_eq!(t.to_string(), "https://[::1]:8443/healthz");
        assert_eq!(t.endpoint().to_string(), "[::1]:8443");
        t.spec.kind = CheckKind::Tcp;
        assert_eq!(t.to_string(), "tcp://[::1]:8443");
    }

    #[test]
    fn the_same_probe_ignores_timing_thresholds_and_initial_state_only() {
        let base = Target { address: "10.0.0.1".parse().unwrap(), spec: spec(CheckKind::Http, 80) };
        let mut retuned = base.clone();
        retuned.spec.interval *= 2;
        retuned.spec.timeout *= 2;
        (retuned.spec.rise, retuned.spec.fall, retuned.spec.initially_up) = (5, 5, true);
        assert!(base.same_probe(&retuned));
        let mut other_path = base.clone();
        other_path.spec.path = "/other".into();
        assert!(!base.same_probe(&other_path));
        let mut other_address = base.clone();
        other_address.address = "10.0.0.2".parse().unwrap();
        assert!(!base.same_probe(&other_address));
    }
}
