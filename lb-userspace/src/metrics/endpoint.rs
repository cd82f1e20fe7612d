//! The HTTP endpoint of the metrics: `GET /metrics` and `GET /healthz`
//! (HTTP/1.1, one request per connection), on the shared bounded [`server`].
//!
//! [`server`]: crate::server

use std::{io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::server;

/// What the HTTP endpoint serves; the controller implements it from what it
/// publishes, never from its own state.
pub trait Scrape: Send + Sync + 'static {
    /// Full metrics text (the controller refreshes data-path values first).
    fn metrics(&self) -> String;
    /// The balancer's health: `Ok(body)` (200) while it can forward, `Err(body)`
    /// (503) with the reasons otherwise.
    fn health(&self) -> Result<String, String>;
}

/// Bounds of one HTTP connection.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Request line and headers together.
    max_request: usize,
    /// For the whole request head, and again for writing the response.
    timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    max_connections: usize,
}

impl Limits {
    const DEFAULT: Self =
        Self { max_request: 8 * 1024, timeout: Duration::from_secs(5), max_connections: 64 };
}

/// Serves `GET /metrics` and `GET /healthz` (HTTP/1.1, one request per
/// connection) until the task is dropped.
pub async fn serve(listener: TcpListener, source: Arc<dyn Scrape>) -> anyhow::Result<()> {
    serve_with(listener, source, Limits::DEFAULT).await
}

async fn serve_with(
    listener: TcpListener,
    source: Arc<dyn Scrape>,
    limits: Limits,
) -> anyhow::Result<()> {
    server::serve(listener, limits.max_connections, "metrics", move |stream| {
        connection(stream, Arc::clone(&source), limits)
    })
    .await
}

/// Outcome of reading a request head.
enum Head {
    /// Request line and headers, without the blank line.
    Complete(Vec<u8>),
    TooLarge,
    /// The peer closed before finishing the head.
    Closed,
}

/// Position of the blank line that ends the head (CRLF or bare LF lines).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn read_head(stream: &mut TcpStream, max: usize) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            if end > max {
                return Ok(Head::TooLarge);
            }
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= max {
            return Ok(Head::TooLarge);
        }
    }
}

/// An HTTP response, rendered by `bytes`.
struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Reply {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }

    fn bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// What a request asks for, from its head alone.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    NotFound,
    BadMethod,
    BadRequest,
}

/// Parses the request line; returns the route and whether the method was HEAD.
fn route(head: &[u8]) -> (Route, bool) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return (Route::BadRequest, false);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, false);
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return (Route::BadRequest, false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (Route::BadMethod, false);
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Health,
        _ => Route::NotFound,
    };
    (route, head_only)
}

async fn connection(
    mut stream: TcpStream,
    source: Arc<dyn Scrape>,
    limits: Limits,
) -> anyhow::Result<()> {
    let head = match tokio::time::timeout(
        limits.timeout,
        read_head(&mut stream, limits.max_request),
    )
    .await
    {
        Ok(head) => head?,
        // Too slow to finish the head: close without an answer.
        Err(_) => Head::Closed,
    };
    let (reply, head_only) = match head {
        Head::Closed => return Ok(()),
        Head::TooLarge => {
            (Reply::text(431, "Request Header Fields Too Large", "request too large\n"), false)
        }
        Head::Complete(head) => {
            let (route, head_only) = route(&head);
            (answer(route, &source).await?, head_only)
        }
    };
    let bytes = reply.bytes(head_only);
    tokio::time::timeout(limits.timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        // Read what the client still sends (an oversized head, a body) until it
        // closes: closing with unread data would reset the connection and could
        // destroy the response before the client reads it.
        let mut sink = [0u8; 1024];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        io::Result::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out writing the response"))??;
    Ok(())
}

async fn answer(route: Route, source: &Arc<dyn Scrape>) -> anyhow::Result<Reply> {
    Ok(match route {
        Route::Metrics => {
            // The controller reads BPF maps here: keep it off the async workers.
            let source = Arc::clone(source);
            let body = tokio::task::spawn_blocking(move || source.metrics()).await?;
            Reply { content_type: "text/plain; version=0.0.4", ..Reply::text(200, "OK", body) }
        }
        Route::Health => {
            let source = Arc::clone(source);
            match tokio::task::spawn_blocking(move || source.health()).await? {
                Ok(body) => Reply::text(200, "OK", body),
                Err(body) => Reply::text(503, "Service Unavailable", body),
            }
        }
        Route::NotFound => Reply::text(404, "Not Found", "not found\n"),
        Route::BadMethod => {
            Reply { allow: true, ..Reply::text(405, "Method Not Allowed", "method not allowed\n") }
        }
        Route::BadRequest => Reply::text(400, "Bad Request", "bad request\n"),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::{metrics::Metrics, testing::value};

    struct Fake {
        healthy: AtomicBool,
    }

    impl Scrape for Fake {
        fn metrics(&self) -> String {
            "xdplb_fake_total 42\n".to_owned()
        }
        fn health(&self) -> Result<String, String> {
            if self.healthy.load(Ordering::SeqCst) {
                Ok("ok\n".to_owned())
            } else {
                Err("xdp program detached\n".to_owned())
            }
        }
    }

    async fn start(limits: Limits) -> (std::net::SocketAddr, Arc<Fake>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let fake = Arc::new(Fake { healthy: AtomicBool::new(true) });
        tokio::spawn(serve_with(listener, Arc::clone(&fake) as Arc<dyn Scrape>, limits));
        (addr, fake)
    }

    /// Sends `request` raw and returns (status, headers (lowercased names), body).
    async fn exchange(
        addr: std::net::SocketAddr,
        request: &[u8],
    ) -> (u16, Vec<(String, String)>, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        let raw = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status =
            status_line.split(' ').nth(1).expect("status code").parse().expect("numeric status");
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header");
                (k.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        (status, headers, body.to_owned())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn get_metrics_is_200_with_the_prometheus_text_content_type() {
        let (addr, _) = start(Limits::DEFAULT).await;
        let (status, headers, body) =
            exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-type"), Some("text/plain; version=0.0.4"));
        assert_eq!(header(&headers, "connection"), Some("close"));
        assert_eq!(header(&headers, "content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(body, "xdplb_fake_total 42\n");
    }

    #[tokio::test]
    async fn metrics_serves_a_real_registry_and_ignores_a_query_string() {
        struct Real(Metrics);
        impl Scrape for Real {
            fn metrics(&self) -> String {
                self.0.render()
            }
            fn health(&self) -> Result<String, String> {
                Ok("ok\n".to_owned())
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics = Metrics::new();
        metrics.reload(true);
        tokio::spawn(serve(listener, Arc::new(Real(metrics))));
        let (status, _, body) = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, 200);
        assert_eq!(value(&body, "xdplb_config_reloads_total", &[("result", "ok")]), Some(1.0));
    }

    #[tokio::test]
    async fn healthz_is_200_ok_while_healthy_and_503_with_the_reason_otherwise() {
        let (addr, fake) = start(Limits::DEFAULT).await;
        let (status, _, body) = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        fake.healthy.store(false, Ordering::SeqCst);
        let (status, _, body) = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (503, "xdp program detached\n"));
    }

    #[tokio::test]
    async fn other_paths_are_404() {
        let (addr, _) = start(Limits::DEFAULT).await;
        let (status, _, body) = exchange(addr, b"GET /metricsx HTTP/1.1\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (404, "not found\n"));
    }

    #[tokio::test]
    async fn other_methods_are_405_with_allow() {
        let (addr, _) = start(Limits::DEFAULT).await;
        let (status, headers, _) =
            exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").await;
        assert_eq!(status, 405);
        assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    }

    #[tokio::test]
    async fn head_answers_headers_without_a_body() {
        let (addr, _) = start(Limits::DEFAULT).await;
        let (status, headers, body) = exchange(addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, ""));
        assert_eq!(header(&headers, "content-length"), Some("3"));
    }

    #[tokio::test]
    async fn a_malformed_request_line_is_400() {
        let (addr, _) = start(Limits::DEFAULT).await;
        let (status, _, _) = exchange(addr, b"GET\r\n\r\n").await;
        assert_eq!(status, 400);
        let (status, _, _) = exchange(addr, b"GET /metrics SPDY/3\r\n\r\n").await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn a_request_over_8_kib_is_431() {
        let (addr, _) = start(Limits::DEFAULT).await;
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 9 * 1024));
        request.extend_from_slice(b"\r\n\r\n");
        let (status, _, _) = exchange(addr, &request).await;
        assert_eq!(status, 431);
    }

    #[tokio::test]
    async fn a_silent_client_is_disconnected_after_the_read_timeout() {
        let limits = Limits { timeout: Duration::from_millis(200), ..Limits::DEFAULT };
        let (addr, _) = start(limits).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /metrics HTTP/1.1\r\n").await.expect("send");
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "expected a close without a response, got {read:?} {rest:?}"
        );
    }

    #[tokio::test]
    async fn connections_are_served_concurrently() {
        let (addr, _) = start(Limits::DEFAULT).await;
        // A client that never finishes its request must not block the next one.
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        stalled.write_all(b"GET /met").await.expect("send");
        let (status, _, _) = tokio::time::timeout(
            Duration::from_secs(2),
            exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n"),
        )
        .await
        .expect("answered while another connection stalls");
        assert_eq!(status, 200);
    }

    #[test]
    fn head_end_accepts_crlf_and_bare_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
