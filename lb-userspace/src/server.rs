//! The accept loop of the metrics endpoint and the admin socket: each connection
//! in its own task, at most `max_connections` at once (more wait in the listen
//! backlog), and a pause after a failed accept.

use std::{future::Future, io, sync::Arc, time::Duration};

use log::{debug, warn};
use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::Semaphore,
};

/// A listening socket the server accepts from: TCP or Unix.
pub trait Listener: Send + Sync + 'static {
    type Stream: Send + 'static;
    /// The next connection, and its peer as the debug log shows it.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn accept(&self) -> io::Result<(TcpStream, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        Ok((stream, peer.to_string()))
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn accept(&self) -> io::Result<(UnixStream, String)> {
        let (stream, _) = UnixListener::accept(self).await?;
        // Peers of the admin socket have no address; the log needs none either.
        Ok((stream, "client".to_owned()))
    }
}

/// Serves connections until the task is dropped: `handle` runs once per
/// connection, in its own task; `what` names the server in the log.
pub async fn serve<L, H, F>(
    listener: L,
    max_connections: usize,
    what: &'static str,
    handle: H,
) -> anyhow::Result<()>
where
    L: Listener,
    H: Fn(L::Stream) -> F + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends pass; spinning on them would burn a core.
                warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connection = handle(stream);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("{what}: {peer}: {e:#}");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Echoes one byte back, then closes.
    async fn echo_byte(mut stream: TcpStream) -> anyhow::Result<()> {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        stream.write_all(&byte).await?;
        Ok(())
    }

    async fn start(max_connections: usize) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, max_connections, "test", echo_byte));
        addr
    }

    async fn exchange(stream: &mut TcpStream, byte: u8) -> io::Result<u8> {
        stream.write_all(&[byte]).await?;
        let mut back = [0u8; 1];
        stream.read_exact(&mut back).await?;
        Ok(back[0])
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_ends() {
        let addr = start(1).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        // Accepted by the kernel, but not served while the first one holds the slot.
        let mut second = TcpStream::connect(addr).await.expect("connect");
        second.write_all(&[2]).await.expect("send");
        let mut back = [0u8; 1];
        let waited =
            tokio::time::timeout(Duration::from_millis(200), second.read_exact(&mut back)).await;
        assert!(waited.is_err(), "served beyond the limit");
        assert_eq!(exchange(&mut first, 1).await.expect("first"), 1);
        drop(first);
        let served = tokio::time::timeout(Duration::from_secs(5), second.read_exact(&mut back))
            .await
            .expect("served once the first ended");
        served.expect("read");
        assert_eq!(back, [2]);
    }

    #[tokio::test]
    async fn connections_within_the_limit_are_served_at_once() {
        let addr = start(2).await;
        let mut a = TcpStream::connect(addr).await.expect("connect");
        let mut b = TcpStream::connect(addr).await.expect("connect");
        let both = tokio::time::timeout(Duration::from_secs(5), async {
            (exchange(&mut b, 7).await, exchange(&mut a, 8).await)
        })
        .await
        .expect("both served while both are open");
        assert_eq!((both.0.expect("b"), both.1.expect("a")), (7, 8));
    }
}
