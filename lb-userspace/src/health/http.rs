//! HTTP/1.1 probe: `GET path`, then only the status line is read. The request
//! and response handling here is shared with the https probe.

use std::{io, net::IpAddr, net::SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{CheckSpec, Failure, tcp};

/// Bound on what is read before the final status line is complete: status
/// lines are short, so more than this is not an HTTP server worth waiting for.
const MAX_HEAD: usize = 8 * 1024;

const USER_AGENT: &str = "xdplb-health";

pub(super) async fn probe(address: IpAddr, spec: &CheckSpec) -> Result<(), Failure> {
    let request = request(address, spec, 80)?;
    let mut stream = tcp::connect(address, spec.port).await?;
    let status = exchange(&mut stream, &request, Failure::from_io).await?;
    check_status(status, spec)
}

/// The `Host` header value: `spec.host` as given, else the address (with the
/// port when it is not the scheme's default).
pub(super) fn host_header(address: IpAddr, spec: &CheckSpec, default_port: u16) -> String {
    match &spec.host {
        Some(host) => host.clone(),
        None if spec.port == default_port => match address {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        },
        None => SocketAddr::new(address, spec.port).to_string(),
    }
}

/// The request bytes; a path or host that would break the request line or
/// inject headers is refused rather than sent.
pub(super) fn request(
    address: IpAddr,
    spec: &CheckSpec,
    default_port: u16,
) -> Result<Vec<u8>, Failure> {
    let path = if spec.path.is_empty() { "/" } else { spec.path.as_str() };
    let host = host_header(address, spec, default_port);
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(path) {
        return Err(Failure::Other(format!("invalid health-check path {path:?}")));
    }
    if host.is_empty() || !printable(&host) {
        return Err(Failure::Other(format!("invalid health-check host {host:?}")));
    }
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes())
}

/// Healthy iff `status` is listed; an empty list accepts any 2xx or 3xx (as
/// `HAProxy`'s `httpchk` does) rather than failing every backend.
pub(super) fn check_status(status: u16, spec: &CheckSpec) -> Result<(), Failure> {
    let ok = if spec.expect_status.is_empty() {
        (200..400).contains(&status)
    } else {
        spec.expect_status.contains(&status)
    };
    if ok { Ok(()) } else { Err(Failure::Status(status)) }
}

/// Sends `request` and reads up to the final status line; returns its code.
/// `classify` turns transport errors into failures (TLS has its own).
pub(super) async fn exchange<S>(
    stream: &mut S,
    request: &[u8],
    classify: fn(&io::Error) -> Failure,
) -> Result<u16, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(request).await.map_err(|e| classify(&e))?;
    stream.flush().await.map_err(|e| classify(&e))?;

    let mut buf = vec![0; MAX_HEAD];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(Failure::Protocol(format!("no status line within {MAX_HEAD} bytes")));
        }
        let n = match stream.read(&mut buf[len..]).await {
            Ok(n) => n,
            // TLS peers that close without close_notify: the same as a plain EOF here.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(classify(&e)),
        };
        if n == 0 {
            let what = if len == 0 {
                "connection closed without a response"
            } else {
                "connection closed mid status line"
            };
            return Err(Failure::Protocol(what.into()));
        }
        len += n;
        match parse_head(&buf[..len]) {
            Head::Incomplete => {}
            Head::Status(code) => return Ok(code),
            Head::Invalid(why) => return Err(Failure::Protocol(why.into())),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Head {
    Incomplete,
    /// The final (non-1xx) status.
    Status(u16),
    Invalid(&'static str),
}

/// Parses the start of a response: interim 1xx responses (e.g. 103 Early Hints)
/// are skipped; the first final status line decides. Checks each byte as it
/// arrives, so garbage fails at once instead of waiting for a newline.
fn parse_head(mut buf: &[u8]) -> Head {
    loop {
        let line_end = buf.iter().position(|&b| b == b'\n');
        let line = &buf[..line_end.unwrap_or(buf.len())];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Err(why) = check_status_line(line, line_end.is_some()) {
            return Head::Invalid(why);
        }
        let Some(end) = line_end else {
            return Head::Incomplete;
        };
        let code = status_code(line);
        // 101 answers a request for an upgrade we never make: let it fail as a status.
        if !(100..200).contains(&code) || code == 101 {
            return Head::Status(code);
        }
        match end_of_header_block(&buf[end + 1..]) {
            Some(skip) => buf = &buf[end + 1 + skip..],
            None => return Head::Incomplete,
        }
    }
}

/// `HTTP/1.x DDD` followed by the end of the line or a space and a reason.
/// With `complete == false`, checks only the bytes present so far.
fn check_status_line(line: &[u8], complete: bool) -> Result<(), &'static str> {
    const PREFIX: &[u8] = b"HTTP/1.";
    // Index 7 is the minor version and 9..12 the code: digits; 8 and 12 spaces.
    for (i, &b) in line.iter().enumerate().take(13) {
        let good = match i {
            0..=6 => b == PREFIX[i],
            8 | 12 => b == b' ',
            _ => b.is_ascii_digit(),
        };
        if !good {
            return Err(if i < 7 { "not an http/1.x response" } else { "malformed status line" });
        }
    }
    if line.len() >= 12 && !(100..600).contains(&status_code(line)) {
        return Err("status code out of range");
    }
    if complete && line.len() < 12 {
        return Err("malformed status line");
    }
    Ok(())
}

/// The three digits at 9..12; the caller has checked they are digits.
fn status_code(line: &[u8]) -> u16 {
    line[9..12].iter().fold(0, |acc, &d| acc * 10 + u16::from(d - b'0'))
}

/// Length of a header block up to and including its empty line, if complete.
fn end_of_header_block(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(offset) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + offset];
        start += offset + 1;
        if line.is_empty() || line == b"\r" {
            return Some(start);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, net::Ipv6Addr, time::Duration};

    use super::super::{
        CheckKind, probe as bounded_probe,
        test_server::{Reply, TestServer, spec},
    };
    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn http(port: u16) -> CheckSpec {
        spec(CheckKind::Http, port)
    }

    #[tokio::test]
    async fn status_200_is_healthy() {
        let server = TestServer::http(Reply::Status(200)).await;
        assert_eq!(bounded_probe(LOCALHOST, &http(server.port())).await, Ok(()));
    }

    #[tokio::test]
    async fn status_503_fails_with_its_code() {
        let server = TestServer::http(Reply::Status(503)).await;
        let failure = bounded_probe(LOCALHOST, &http(server.port())).await.unwrap_err();
        assert_eq!(failure, Failure::Status(503));
        assert_eq!((failure.label(), failure.to_string().as_str()), ("status", "status 503"));
    }

    #[tokio::test]
    async fn any_listed_status_is_healthy_and_unlisted_ones_fail() {
        let server = TestServer::http(Reply::Status(204)).await;
        let mut spec = http(server.port());
        spec.expect_status = vec![200, 204];
        assert_eq!(bounded_probe(LOCALHOST, &spec).await, Ok(()));
        spec.expect_status = vec![200];
        assert_eq!(bounded_probe(LOCALHOST, &spec).await, Err(Failure::Status(204)));
    }

    #[tokio::test]
    async fn request_is_a_get_of_the_path_with_host_user_agent_and_connection_close() {
        let server = TestServer::http(Reply::Status(200)).await;
        let mut spec = http(server.port());
        spec.path = "/health?deep=1".into();
        spec.host = Some("waf.example".into());
        assert_eq!(bounded_probe(LOCALHOST, &spec).await, Ok(()));
        let requests = server.requests();
        let head = requests.first().expect("server saw no request");
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "GET /health?deep=1 HTTP/1.1");
        for header in ["Host: waf.example", "User-Agent: xdplb-health", "Connection: close"] {
            assert!(lines.contains(&header), "{header:?} missing from {head:?}");
        }
    }

    #[tokio::test]
    async fn host_header_defaults_to_the_address_and_port() {
        let server = TestServer::http(Reply::Status(200)).await;
        assert_eq!(bounded_probe(LOCALHOST, &http(server.port())).await, Ok(()));
        let expected = format!("Host: 127.0.0.1:{}", server.port());
        assert!(
            server.requests()[0].split("\r\n").any(|l| l == expected),
            "{:?}",
            server.requests()
        );
    }

    #[test]
    fn host_header_brackets_ipv6_and_omits_the_default_port() {
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(host_header(v6, &http(80), 80), "[::1]");
        assert_eq!(host_header(v6, &http(8080), 80), "[::1]:8080");
        assert_eq!(host_header(LOCALHOST, &http(443), 443), "127.0.0.1");
    }

    #[test]
    fn paths_and_hosts_that_would_inject_headers_are_refused() {
        let mut spec = http(80);
        spec.path = "/x HTTP/1.1\r\nEvil: 1".into();
        assert_eq!(request(LOCALHOST, &spec, 80).unwrap_err().label(), "other");
        let mut spec = http(80);
        spec.host = Some("a\r\nb".into());
        assert_eq!(request(LOCALHOST, &spec, 80).unwrap_err().label(), "other");
        let mut spec = http(80);
        spec.path = String::new();
        assert!(request(LOCALHOST, &spec, 80).unwrap().starts_with(b"GET / HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn server_that_accepts_and_never_answers_times_out() {
        let server = TestServer::http(Reply::Silent).await;
        let mut spec = http(server.port());
        spec.timeout = Duration::from_millis(200);
        assert_eq!(bounded_probe(LOCALHOST, &spec).await, Err(Failure::Timeout));
    }

    #[tokio::test]
    async fn garbage_response_is_a_protocol_failure() {
        let server = TestServer::http(Reply::Raw(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec())).await;
        assert_eq!(
            bounded_probe(LOCALHOST, &http(server.port())).await.unwrap_err().label(),
            "protocol"
        );
    }

    #[tokio::test]
    async fn garbage_without_a_newline_fails_at_once_instead_of_timing_out() {
        // The server keeps the connection open: only early rejection avoids a timeout.
        let server = TestServer::http(Reply::Raw(b"hello".to_vec())).await;
        let mut spec = http(server.port());
        spec.timeout = Duration::from_secs(30);
        let failed =
            tokio::time::timeout(Duration::from_secs(5), bounded_probe(LOCALHOST, &spec)).await;
        assert_eq!(failed.expect("probe waited for more garbage").unwrap_err().label(), "protocol");
    }

    #[tokio::test]
    async fn over_long_status_line_is_a_protocol_failure() {
        let mut reply = b"HTTP/1.1 200 ".to_vec();
        reply.extend(std::iter::repeat_n(b'a', 3 * MAX_HEAD));
        let server = TestServer::http(Reply::Raw(reply)).await;
        let failure = bounded_probe(LOCALHOST, &http(server.port())).await.unwrap_err();
        assert_eq!(failure, Failure::Protocol(format!("no status line within {MAX_HEAD} bytes")));
    }

    #[tokio::test]
    async fn server_closing_at_once_is_a_failure() {
        let server = TestServer::http(Reply::Close).await;
        let failure = bounded_probe(LOCALHOST, &http(server.port())).await.unwrap_err();
        // Closing with our request unread makes the kernel send RST, so either is right.
        assert!(matches!(failure, Failure::Protocol(_) | Failure::Reset), "{failure:?}");
    }

    #[tokio::test]
    async fn status_line_split_across_many_reads_is_assembled() {
        let server =
            TestServer::http(Reply::Trickle(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n".to_vec()))
                .await;
        assert_eq!(bounded_probe(LOCALHOST, &http(server.port())).await, Ok(()));
    }

    #[tokio::test]
    async fn interim_1xx_responses_are_skipped() {
        let reply = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n";
        let server = TestServer::http(Reply::Raw(reply.to_vec())).await;
        assert_eq!(bounded_probe(LOCALHOST, &http(server.port())).await, Err(Failure::Status(503)));
    }

    #[test]
    fn parser_accepts_http_1_0_and_missing_reason_phrase() {
        assert_eq!(parse_head(b"HTTP/1.0 200 OK\r\n"), Head::Status(200));
        assert_eq!(parse_head(b"HTTP/1.1 204\r\n"), Head::Status(204));
        assert_eq!(parse_head(b"HTTP/1.1 404 Not Found\n"), Head::Status(404));
        assert_eq!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            Head::Status(200)
        );
    }

    #[test]
    fn parser_waits_on_every_prefix_of_a_valid_response() {
        let with_interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\n";
        for full in [&with_interim[..], b"HTTP/1.1 200\r\n"] {
            for cut in 0..full.len() {
                assert_eq!(parse_head(&full[..cut]), Head::Incomplete, "cut at {cut}");
            }
            assert_eq!(parse_head(full), Head::Status(200));
        }
    }

    #[test]
    fn parser_rejects_malformed_status_lines() {
        for bad in [
            &b"HTTP/2 200 OK\r\n"[..],
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/1.1 2000\r\n",
            b"HTTP/1.1 abc\r\n",
            b"HTTP/1.1 999 Nine\r\n",
            b"HTTP/1.1 042 Low\r\n",
            b"http/1.1 200 OK\r\n",
            b"\r\nHTTP/1.1 200 OK\r\n",
            b"HTTP/1.1\r\n",
            b"<html>",
            b"\0\0\0",
        ] {
            assert!(
                matches!(parse_head(bad), Head::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
