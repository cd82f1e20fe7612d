//! Health checks: what to probe (`CheckSpec`, `Target`), how (tcp, http, https),
//! the loops that probe (`runner`), and the rise/fall hysteresis that turns probe
//! results into state changes (`state`, applied by the controller).

use std::time::Duration;

/// How a backend is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckKind {
    /// TCP connect succeeds.
    Tcp,
    /// HTTP/1.1 GET answers with an expected status.
    Http,
    /// As `Http`, over TLS (rustls).
    Https,
}

impl CheckKind {
    /// The config's spelling, also the metrics' `kind` label.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// One health check, fully resolved (config defaults filled in).
#[expect(clippy::struct_excessive_bools, reason = "each flag is its own config key")]
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckSpec {
    pub kind: CheckKind,
    pub port: u16,
    /// Request path (http, https).
    pub path: String,
    /// Host header and TLS SNI; the backend address when `None`.
    pub host: Option<String>,
    /// Statuses that count as healthy (http, https).
    pub expect_status: Vec<u16>,
    /// Verify the backend's certificate (https).
    pub tls_verify: bool,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that bring an up backend down.
    pub fall: u32,
    /// State before the first `rise` successes (default: down).
    pub initially_up: bool,
    /// A refused probe (the backend answered its SYN with a reset: nothing
    /// listens) brings an up backend down at once, without waiting for `fall`.
    pub refused_is_down: bool,
    /// Flap damping (`flap_changes`, `flap_window`, `flap_hold`).
    pub damping: Damping,
    /// Probe at once, and then every `fast_interval` with `fast_timeout`, when the
    /// data path sees the backend stop completing handshakes (see
    /// `controller/suspicion.rs`); rise and fall still decide.
    pub passive: bool,
    pub fast_interval: Duration,
    pub fast_timeout: Duration,
}

mod damping;
mod http;
mod https;
pub mod runner;
pub mod state;
mod target;
mod tcp;
#[cfg(test)]
mod test_server;

use std::{io, net::IpAddr};

pub use damping::{Damping, Flaps};
pub use runner::{HealthRunner, Probed};
pub use state::{Hysteresis, Transition};
pub use target::Target;

/// Why a probe failed, by class. `label()` is stable (metrics use it); the
/// `Display` text is for logs and change reasons.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("connection refused")]
    Refused,
    /// The whole probe did not finish within `CheckSpec::timeout`.
    #[error("timeout")]
    Timeout,
    #[error("connection reset")]
    Reset,
    #[error("unreachable")]
    Unreachable,
    /// The backend answered with a status not in `expect_status`.
    #[error("status {0}")]
    Status(u16),
    /// Handshake or certificate failure.
    #[error("tls: {0}")]
    Tls(String),
    /// The backend answered, but not with HTTP/1.x.
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Other(String),
}

impl Failure {
    /// The failure class as a metric label value.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Unreachable => "unreachable",
            Self::Status(_) => "status",
            Self::Tls(_) => "tls",
            Self::Protocol(_) => "protocol",
            Self::Other(_) => "other",
        }
    }

    /// Classifies a socket error.
    #[must_use]
    pub fn from_io(err: &io::Error) -> Self {
        use io::ErrorKind as K;
        // Raw errno first: it is what the kernel said, and `ErrorKind` leaves some
        // of these (EHOSTDOWN) uncategorised.
        if let Some(errno) = err.raw_os_error() {
            match errno {
                libc::ECONNREFUSED => return Self::Refused,
                libc::ETIMEDOUT => return Self::Timeout,
                libc::ECONNRESET | libc::ECONNABORTED | libc::EPIPE => return Self::Reset,
                libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN => {
                    return Self::Unreachable;
                }
                _ => {}
            }
        }
        match err.kind() {
            K::ConnectionRefused => Self::Refused,
            K::TimedOut => Self::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Self::Reset,
            K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown => Self::Unreachable,
            _ => Self::Other(err.to_string()),
        }
    }
}

/// Runs one probe of `spec` against `address`, bounded as a whole by
/// `spec.timeout` (connect, TLS handshake, request and status line together).
pub async fn probe(address: IpAddr, spec: &CheckSpec) -> Result<(), Failure> {
    let attempt = async {
        match spec.kind {
            CheckKind::Tcp => tcp::probe(address, spec.port).await,
            CheckKind::Http => http::probe(address, spec).await,
            CheckKind::Https => https::probe(address, spec).await,
        }
    };
    tokio::time::timeout(spec.timeout, attempt).await.unwrap_or(Err(Failure::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_stable_failure_classes() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(Failure::from_io(&os(libc::ECONNREFUSED)), Failure::Refused);
        assert_eq!(Failure::from_io(&os(libc::ETIMEDOUT)), Failure::Timeout);
        assert_eq!(Failure::from_io(&os(libc::ECONNRESET)), Failure::Reset);
        assert_eq!(Failure::from_io(&os(libc::EPIPE)), Failure::Reset);
        assert_eq!(Failure::from_io(&os(libc::EHOSTUNREACH)), Failure::Unreachable);
        assert_eq!(Failure::from_io(&os(libc::ENETUNREACH)), Failure::Unreachable);
        assert_eq!(
            Failure::from_io(&io::Error::from(io::ErrorKind::ConnectionReset)),
            Failure::Reset
        );
        assert_eq!(Failure::from_io(&os(libc::EADDRNOTAVAIL)).label(), "other");
    }

    #[test]
    fn labels_are_stable_and_status_message_names_the_code() {
        let labels: Vec<_> = [
            Failure::Refused,
            Failure::Timeout,
            Failure::Reset,
            Failure::Unreachable,
            Failure::Status(503),
            Failure::Tls(String::new()),
            Failure::Protocol(String::new()),
            Failure::Other(String::new()),
        ]
        .iter()
        .map(Failure::label)
        .collect();
        assert_eq!(
            labels,
            ["refused", "timeout", "reset", "unreachable", "status", "tls", "protocol", "other"]
        );
        assert_eq!(Failure::Status(503).to_string(), "status 503");
        assert_eq!(Failure::Refused.to_string(), "connection refused");
    }
}
