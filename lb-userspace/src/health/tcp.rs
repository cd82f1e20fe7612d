//! TCP connect probe, and the connect step of the http and https probes.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use super::Failure;

/// Connects to `address:port`. The caller bounds the time (`super::probe`).
pub(super) async fn connect(address: IpAddr, port: u16) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect(SocketAddr::new(address, port))
        .await
        .map_err(|e| Failure::from_io(&e))?;
    // Close with RST, not FIN: the balancer is the active closer of every probe and would
    // otherwise hold a TIME_WAIT socket per probe. Failing to set it only costs that.
    let _ = stream.set_zero_linger();
    Ok(stream)
}

/// Healthy iff the three-way handshake completes.
pub(super) async fn probe(address: IpAddr, port: u16) -> Result<(), Failure> {
    connect(address, port).await.map(drop)
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use tokio::net::{TcpListener, TcpSocket};

    use super::super::{CheckKind, probe as bounded_probe, test_server::spec};
    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn connect_to_a_listening_port_succeeds() {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(bounded_probe(LOCALHOST, &spec(CheckKind::Tcp, port)).await, Ok(()));
    }

    #[tokio::test]
    async fn connect_to_a_closed_port_is_refused() {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert_eq!(
            bounded_probe(LOCALHOST, &spec(CheckKind::Tcp, port)).await,
            Err(Failure::Refused)
        );
    }

    #[tokio::test]
    async fn connect_that_gets_no_answer_times_out() {
        // A listener that never accepts, with a backlog of 0: once its accept queue is
        // full the kernel drops further SYNs, so a connect hangs, on loopback, deterministically.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        let mut full = false;
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(e)) => panic!("filler connect failed: {e}"),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        assert!(full, "accept queue never filled");
        let mut tcp = spec(CheckKind::Tcp, addr.port());
        tcp.timeout = Duration::from_millis(150);
        assert_eq!(bounded_probe(LOCALHOST, &tcp).await, Err(Failure::Timeout));
    }
}
