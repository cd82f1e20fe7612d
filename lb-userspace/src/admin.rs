//! The admin Unix socket: the CLI (`xdplb status | drain | undrain | reload`)
//! sends one JSON line per request to the running daemon and reads one JSON line
//! back.

use std::{
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use log::debug;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
};

use crate::{
    access::{self, Access},
    server,
};

/// What the CLI asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Status,
    Drain { vip: String, backend: String },
    Undrain { vip: String, backend: String },
    Reload,
}

impl Request {
    /// The command's name, as the CLI spells it.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Drain { .. } => "drain",
            Self::Undrain { .. } => "undrain",
            Self::Reload => "reload",
        }
    }
}

/// The daemon's answer: text for humans; `Error` makes the CLI exit 1.
/// `Failing` is a `status` of a balancer that cannot forward: the CLI prints it
/// as it prints `Ok`, and exits 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok(String),
    Error(String),
    Failing(String),
}

/// Longest request or response line, newline excluded.
const MAX_LINE: usize = 64 * 1024;
/// How long the daemon waits for the next request on an open connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once (an operator's commands, a script or two).
const MAX_CONNECTIONS: usize = 16;
/// How long the CLI waits for the daemon (a reload may take a moment).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin socket at `path`, with `access`'s mode (0600, or 0660 and
/// its group) from the moment it exists there: the socket is bound in a private
/// directory beside `path` (mode 0700), given its mode and group there, and only
/// then linked into place, so no process ever finds it with the umask's mode.
/// Creates the parent directory (mode 0700) if missing; replaces a stale socket
/// file only when nothing answers on it; refuses to start if another daemon
/// does. Must be called inside a tokio runtime.
pub fn bind(path: &Path, access: &Access) -> anyhow::Result<UnixListener> {
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent.to_owned(),
        None => std::path::PathBuf::from("."),
    };
    if !parent.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let file = path.file_name().ok_or_else(|| anyhow!("{} names no file", path.display()))?;
    let private = Private::create(&parent, file)?;
    let staged = private.0.join("socket");
    let listener = std::os::unix::net::UnixListener::bind(&staged)
        .map_err(|e| anyhow!("cannot bind {}: {e}", path.display()))?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(access.mode()))
        .with_context(|| format!("cannot chmod {}", staged.display()))?;
    if let Some(gid) = access.status_group {
        std::os::unix::fs::lchown(&staged, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    place(&staged, path)?;
    drop(private);
    listener.set_nonblocking(true).context("admin socket: set_nonblocking")?;
    UnixListener::from_std(listener).context("admin socket: register with tokio")
}

/// A private directory (mode 0700) beside the socket's path, removed on drop.
struct Private(std::path::PathBuf);

impl Private {
    fn create(parent: &Path, file: &std::ffi::OsStr) -> anyhow::Result<Self> {
        let mut name = std::ffi::OsString::from(".");
        name.push(file);
        name.push(format!(".{}.new", std::process::id()));
        let dir = parent.join(name);
        // Left by a crashed start of this very pid number: ours to remove.
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Links the bound socket `staged` at `path`: atomic, and failing if `path`
/// exists, which then is checked: a stale socket nobody answers on is replaced,
/// a live one means another daemon runs, anything else is left alone.
fn place(staged: &Path, path: &Path) -> anyhow::Result<()> {
    for _ in 0..3 {
        match fs::hard_link(staged, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            // Deleted meanwhile: try again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        };
        if !meta.file_type().is_socket() {
            // Never delete something that is not ours to delete.
            bail!("{} exists and is not a socket", path.display());
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!("another xdplb is running ({} answers)", path.display()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                debug!("admin: removing stale socket {}", path.display());
                fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale {}", path.display()))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot check {}", path.display())),
        }
    }
    bail!("{} keeps reappearing: another xdplb is starting?", path.display())
}

/// Bounds of the admin connections.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_line: usize,
    idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    max_connections: usize,
}

impl Limits {
    const DEFAULT: Self =
        Self { max_line: MAX_LINE, idle_timeout: IDLE_TIMEOUT, max_connections: MAX_CONNECTIONS };
}

/// Serves requests until the task is dropped: one JSON line in, one JSON line
/// out, several requests per connection in sequence, each connection in its own task.
/// Each request is first checked against the peer's credentials (`access`).
pub async fn serve<F, Fut>(listener: UnixListener, access: Access, handler: F) -> anyhow::Result<()>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    serve_with(listener, access, handler, Limits::DEFAULT).await
}

async fn serve_with<F, Fut>(
    listener: UnixListener,
    access: Access,
    handler: F,
    limits: Limits,
) -> anyhow::Result<()>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    let handler = Arc::new(handler);
    let access = Arc::new(access);
    server::serve(listener, limits.max_connections, "admin", move |stream| {
        let (handler, access) = (Arc::clone(&handler), Arc::clone(&access));
        async move { connection(stream, &access, &*handler, limits).await }
    })
    .await
}

/// One line read from a connection.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads up to and including `\n`, at most `max` bytes before it.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> io::Result<Line> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = (&mut *reader).take(limit).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        Ok(Line::Text(buf))
    } else if buf.len() > max {
        Ok(Line::TooLong)
    } else {
        // The last line of a client that closed without a newline still counts.
        Ok(Line::Text(buf))
    }
}

async fn connection<F, Fut>(
    stream: UnixStream,
    access: &Access,
    handler: &F,
    limits: Limits,
) -> anyhow::Result<()>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let peer = access::peer(&stream).context("reading the peer's credentials")?;
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        let line =
            tokio::time::timeout(limits.idle_timeout, read_line(&mut reader, limits.max_line))
                .await
                .map_err(|_| anyhow!("idle for {:?}", limits.idle_timeout))??;
        let (response, close) = match line {
            Line::Eof => return Ok(()),
            // Cannot find the next request boundary reliably: answer and close.
            Line::TooLong => {
                (Response::Error(format!("request longer than {} bytes", limits.max_line)), true)
            }
            Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Text(text) => match serde_json::from_slice::<Request>(&text) {
                Ok(request) => match access.allows(&peer, &request) {
                    Ok(()) => (handler(request).await, false),
                    Err(denied) => {
                        debug!("admin: {denied}");
                        (Response::Error(denied), false)
                    }
                },
                Err(e) => (Response::Error(format!("bad request: {e}")), false),
            },
        };
        let mut out = serde_json::to_vec(&response).context("encode response")?;
        out.push(b'\n');
        tokio::time::timeout(limits.idle_timeout, write.write_all(&out))
            .await
            .map_err(|_| anyhow!("client stopped reading"))??;
        if close {
            return Ok(());
        }
    }
}

/// Sends one request to the daemon at `path` and waits for the answer
/// (blocking; for the CLI).
pub fn call(path: &Path, request: &Request) -> anyhow::Result<Response> {
    let shown = path.display();
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            anyhow!("cannot connect to {shown}: {e} (is xdplb running?)")
        }
        io::ErrorKind::PermissionDenied => anyhow!("cannot connect to {shown}: {e} (run as root?)"),
        _ => anyhow!("cannot connect to {shown}: {e}"),
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = serde_json::to_vec(request).context("encode request")?;
    line.push(b'\n');
    stream.write_all(&line).with_context(|| format!("cannot send to {shown}"))?;

    let mut answer = Vec::new();
    let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1;
    BufReader::new(stream.take(limit)).read_until(b'\n', &mut answer).map_err(|e| {
        if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            anyhow!("no answer from {shown} within {} s", CLIENT_TIMEOUT.as_secs())
        } else {
            anyhow!("cannot read from {shown}: {e}")
        }
    })?;
    if answer.last() != Some(&b'\n') {
        if answer.is_empty() {
            bail!("{shown} closed the connection without answering");
        }
        bail!("incomplete answer from {shown}");
    }
    serde_json::from_slice(&answer).with_context(|| format!("bad answer from {shown}"))
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("xdplb-admin-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    async fn echo(request: Request) -> Response {
        match request {
            Request::Status => Response::Ok("status: fine".to_owned()),
            Request::Drain { vip, backend } => Response::Ok(format!("draining {backend} of {vip}")),
            Request::Undrain { vip, backend } => {
                Response::Error(format!("{backend} of {vip} is not draining"))
            }
            Request::Reload => Response::Ok("reloaded".to_owned()),
        }
    }

    /// `call` from a blocking thread, as the CLI does.
    async fn call_async(path: &Path, request: Request) -> anyhow::Result<Response> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || call(&path, &request)).await.expect("join")
    }

    #[tokio::test]
    async fn every_request_kind_gets_the_handlers_answer() {
        let dir = TempDir::new();
        let path = dir.0.join("admin.sock");
        tokio::spawn(serve(
            bind(&path, &Access::owner_only()).expect("bind"),
            Access::owner_only(),
            echo,
        ));
        let drain = Request::Drain { vip: "web".into(), backend: "waf1".into() };
        let undrain = Request::Undrain { vip: "web".into(), backend: "waf1".into() };
        assert_eq!(
            call_async(&path, Request::Status).await.expect("status"),
            Response::Ok("status: fine".into())
        );
        assert_eq!(
            call_async(&path, drain).await.expect("drain"),
            Response::Ok("draining waf1 of web".into())
        );
        assert_eq!(
            call_async(&path, undrain).await.expect("undrain"),
            Response::Error("waf1 of web is not draining".into())
        );
        assert_eq!(
            call_async(&path, Request::Reload).await.expect("reload"),
            Response::Ok("reloaded".into())
        );
    }

    #[test]
    fn requests_and_responses_are_single_json_lines() {
        let drain = Request::Drain { vip: "web".into(), backend: "waf1".into() };
        assert_eq!(
            serde_json::to_string(&drain).expect("encode"),
            r#"{"Drain":{"vip":"web","backend":"waf1"}}"#
        );
        assert_eq!(serde_json::to_string(&Request::Status).expect("encode"), r#""Status""#);
        let text = Response::Ok("a\nb".into());
        assert!(!serde_json::to_string(&text).expect("encode").contains('\n'));
    }

    #[tokio::test]
    async fn the_socket_is_mode_0600_in_a_created_0700_directory() {
        let dir = TempDir::new();
        let parent = dir.0.join("run").join("xdplb");
        let path = parent.join("admin.sock");
        let _listener = bind(&path, &Access::owner_only()).expect("bind");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&parent), 0o700);
    }

    /// The names and event masks inotify reported for `dir` (non-blocking read).
    fn inotify_events(fd: i32) -> Vec<(String, u32)> {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: reading into a buffer we own, of the length passed.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let mut out = Vec::new();
        let mut at = 0usize;
        let n = usize::try_from(n).unwrap_or(0);
        while at + 16 <= n {
            let word =
                |o: usize| u32::from_ne_bytes(buf[at + o..at + o + 4].try_into().expect("4"));
            let (mask, len) = (word(4), word(12) as usize);
            let name = &buf[at + 16..at + 16 + len];
            let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or_default());
            out.push((name.into_owned(), mask));
            at += 16 + len;
        }
        out
    }

    #[tokio::test]
    async fn the_socket_appears_at_its_path_with_its_final_mode_and_group() {
        let dir = TempDir::new();
        let path = dir.0.join("admin.sock");
        // SAFETY: plain inotify calls on a descriptor we own and close below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let watched = std::ffi::CString::new(dir.0.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid C string.
        let wd = unsafe {
            libc::inotify_add_watch(fd, watched.as_ptr(), libc::IN_CREATE | libc::IN_ATTRIB)
        };
        assert!(wd >= 0);
        // SAFETY: no preconditions.
        let group = unsafe { libc::getegid() };
        let access = Access { status_group: Some(group), ..Access::owner_only() };
        let _listener = bind(&path, &access).expect("bind");
        let events: Vec<u32> = inotify_events(fd)
            .into_iter()
            .filter(|(name, _)| name == "admin.sock")
            .map(|(_, mask)| mask)
            .collect();
        // SAFETY: closing our descriptor.
        unsafe { libc::close(fd) };
        assert_eq!(events, [libc::IN_CREATE], "created once, never changed after it appeared");
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), group);
        let left: Vec<_> =
            fs::read_dir(&dir.0).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(left, ["admin.sock"], "the private directory is gone");
    }

    #[tokio::test]
    async fn a_second_daemon_on_the_same_socket_is_refused() {
        let dir = TempDir::new();
        let path = dir.0.join("admin.sock");
        tokio::spawn(serve(
            bind(&path, &Access::owner_only()).expect("bind"),
            Access::owner_only(),
            echo,
        ));
        let err =
            bind(&path, &Access::owner_only()).expect_err("second bind must fail").to_string();
        assert_eq!(err, format!("another xdplb is running ({} answers)", path.display()));
        // The first daemon is unharmed.
        assert_eq!(
            call_async(&path, Request::Status).await.expect("status"),
            Response::Ok("status: fine".into())
        );
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced() {
        let dir = TempDir::new();
        let path = dir.0.join("admin.sock");
        drop(bind(&path, &Access::owner_only()).expect("first bind"));
        assert!(path.exists(), "the dropped listener leaves its file behind");
        tokio::spawn(serve(
            bind(&path, &Access::owner_only()).expect("bind over a stale socket"),
            Access::owner_only(),
            echo,
        ));
        assert_eq!(
            call_async(&path, Request::Reload).await.expect("reload"),
            Response::Ok("reloaded".into())
        );
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = TempDir::new();
        let path = dir.0.join("admin.sock");
        fs::write(&path, "precious").expect("write");
        let err = bind(&path, &Access::owner_only()).expect_err("must refuse").to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "precious");
    }

    #[tokio::test]
    async fn garbage_gets_an_error_and_the_connection_and_server_keep_working() {
        let dir = TempDir::new();
        let path = dir.0.join("admin.sock");
        tokio::spawn(serve(
            bind(&path, &Access::owner_only()).expect("bind"),
            Access::owner_only(),
            echo,
        ));
        let stream = UnixStream::connect(&path).await.expect("connect");
        let (read, mut write) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        write.write_all(b"this is not json\n{\"Drain\":{}}\n\"Status\"\n").await.expect("send");
        for _ in 0..2 {
            let line = lines.next_line().await.expect("read").expect("a line");
            let response: Response = serde_json::from_str(&line).expect("json response");
            assert!(
                matches!(&response, Response::Error(e) if e.starts_with("bad request")),
                "{response:?}"
            );
        }
        let line = lines.next_line().await.expect("read").expect("a line");
        assert_eq!(
            serde_json::from_str::<Response>(&line).expect("json"),
            Response::Ok("status: fine".into())
        );
        drop(write);
        assert_eq!(
            call_async(&path, Request::Status).await.expect("status"),
            Response::Ok("status: fine".into())
        );
    }

    #[tokio::test]
    async fn a_line_over_64_kib_is_refused_and_the_connection_closed() {
        let dir = TempDir::new();
        let path = dir.0.join("admin.sock");
        tokio::spawn(serve(
            bind(&path, &Access::owner_only()).expect("bind"),
            Access::owner_only(),
            echo,
        ));
        let mut stream = UnixStream::connect(&path).await.expect("connect");
        let (read, mut write) = stream.split();
        let send = async {
            // The server stops reading after 64 KiB; a failed write after that is fine.
            let _ = write.write_all(&vec![b'x'; 70 * 1024]).await;
        };
        let receive = async {
            let mut answer = String::new();
            tokio::io::BufReader::new(read).read_to_string(&mut answer).await.expect("read");
            answer
        };
        let ((), answer) = tokio::join!(send, receive);
        let response: Response =
            serde_json::from_str(answer.trim_end()).expect("one json line, then close");
        assert!(
            matches!(&response, Response::Error(e) if e.contains("longer than")),
            "{response:?}"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_read_timeout() {
        let dir = TempDir::new();
        let path = dir.0.join("admin.sock");
        let limits = Limits { idle_timeout: Duration::from_millis(200), ..Limits::DEFAULT };
        tokio::spawn(serve_with(
            bind(&path, &Access::owner_only()).expect("bind"),
            Access::owner_only(),
            echo,
            limits,
        ));
        let mut stream = UnixStream::connect(&path).await.expect("connect");
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    }

    #[test]
    fn call_without_a_daemon_names_the_socket_and_asks_if_xdplb_runs() {
        let dir = TempDir::new();
        let path = dir.0.join("missing.sock");
        let err = call(&path, &Request::Status).expect_err("no daemon").to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("is xdplb running?"),
            "{err}"
        );

        // A socket file nobody listens on: refused.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let err = call(&path, &Request::Status).expect_err("refused").to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("is xdplb running?"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn read_line_bounds_the_length_and_keeps_a_final_unterminated_line() {
        let mut input: &[u8] = b"short\nlast";
        assert_eq!(read_line(&mut input, 8).await.expect("read"), Line::Text(b"short".to_vec()));
        assert_eq!(read_line(&mut input, 8).await.expect("read"), Line::Text(b"last".to_vec()));
        assert_eq!(read_line(&mut input, 8).await.expect("read"), Line::Eof);
        let mut input: &[u8] = b"123456789\n";
        assert_eq!(read_line(&mut input, 8).await.expect("read"), Line::TooLong);
        let mut input: &[u8] = b"12345678\n";
        assert_eq!(read_line(&mut input, 8).await.expect("read"), Line::Text(b"12345678".to_vec()));
    }
}
