//! Local HTTP(S) servers with scripted misbehaviour, for the probe and runner tests.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

use super::{CheckKind, CheckSpec};

/// A spec with test-friendly defaults: short interval, generous timeout.
pub fn spec(kind: CheckKind, port: u16) -> CheckSpec {
    CheckSpec {
        kind,
        port,
        path: "/healthz".into(),
        host: None,
        expect_status: vec![200],
        tls_verify: false,
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        rise: 2,
        fall: 3,
        initially_up: false,
        refused_is_down: true,
        damping: super::Damping {
            limit: 0,
            window: Duration::from_mins(1),
            hold: Duration::from_mins(1),
        },
        passive: true,
        fast_interval: Duration::from_millis(20),
        fast_timeout: Duration::from_millis(500),
    }
}

/// What the server does with each connection.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Read the request head, answer with this status and close.
    Status(u16),
    /// Send these bytes at once, then hold the connection open.
    Raw(Vec<u8>),
    /// As `Raw`, one byte per write.
    Trickle(Vec<u8>),
    /// Accept, then say nothing and hold the connection open.
    Silent,
    /// Close as soon as accepted, request unread.
    Close,
}

#[derive(Default)]
struct Seen {
    requests: Vec<String>,
    snis: Vec<Option<String>>,
}

struct Shared {
    reply: Mutex<Reply>,
    connections: AtomicUsize,
    seen: Mutex<Seen>,
}

pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl TestServer {
    pub async fn http(reply: Reply) -> Self {
        Self::start(reply, None).await
    }

    pub async fn https(reply: Reply, tls: TlsAcceptor) -> Self {
        Self::start(reply, Some(tls)).await
    }

    async fn start(reply: Reply, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            reply: Mutex::new(reply),
            connections: AtomicUsize::new(0),
            seen: Mutex::new(Seen::default()),
        });
        let accept = tokio::spawn(accept_loop(listener, tls, shared.clone()));
        Self { addr, shared, accept }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_reply(&self, reply: Reply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    /// Connections accepted so far (TLS handshakes need not have succeeded).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Request heads received, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().requests.clone()
    }

    /// SNI of each completed TLS handshake, in order.
    pub fn snis(&self) -> Vec<Option<String>> {
        self.shared.seen.lock().unwrap().snis.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let reply = shared.reply.lock().unwrap().clone();
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if matches!(reply, Reply::Close) {
                return;
            }
            match tls {
                None => serve(stream, reply, &shared).await,
                Some(tls) => {
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    let sni = stream.get_ref().1.server_name().map(str::to_owned);
                    shared.seen.lock().unwrap().snis.push(sni);
                    serve(stream, reply, &shared).await;
                }
            }
        });
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, reply: Reply, shared: &Shared) {
    match reply {
        Reply::Status(code) => {
            let mut head = Vec::new();
            let mut byte = [0; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            shared.seen.lock().unwrap().requests.push(String::from_utf8_lossy(&head).into_owned());
            let response =
                format!("HTTP/1.1 {code} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Reply::Raw(bytes) => {
            let _ = stream.write_all(&bytes).await;
            hold(stream).await;
        }
        Reply::Trickle(bytes) => {
            for b in bytes {
                if stream.write_all(&[b]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            hold(stream).await;
        }
        Reply::Silent => hold(stream).await,
        Reply::Close => {}
    }
}

/// Keeps the connection open until the client goes away.
async fn hold<S: AsyncRead + Unpin>(mut stream: S) {
    let mut sink = [0; 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// A TLS acceptor with a fresh self-signed certificate for `names`.
pub fn self_signed_acceptor(names: &[&str]) -> TlsAcceptor {
    let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}
