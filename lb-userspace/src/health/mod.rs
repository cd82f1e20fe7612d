//! Health checks: what to probe (`CheckSpec`), how (tcp, http, https), and the
//! rise/fall hysteresis that turns probe results into state changes.

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

/// One health check, fully resolved (config defaults filled in).
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
}
