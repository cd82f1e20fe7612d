//! HTTPS probe: the http probe over rustls (ring provider).
//!
//! Verified checks trust the system store (`rustls-native-certs`), not a
//! bundled Mozilla list: WAF nodes behind a balancer usually carry certificates
//! from an internal CA, which operators install into the system store; the
//! bundled list could never verify those. The store is read once, on the first
//! verified probe, so a changed store needs a restart.

use std::{
    io,
    net::IpAddr,
    sync::{Arc, OnceLock},
};

use log::warn;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{self, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio_rustls::TlsConnector;

use super::{CheckSpec, Failure, http, tcp};

pub(super) async fn probe(address: IpAddr, spec: &CheckSpec) -> Result<(), Failure> {
    let request = http::request(address, spec, 443)?;
    let config = client_config(spec.tls_verify)?;
    let name = server_name(address, spec.host.as_deref())?;
    let stream = tcp::connect(address, spec.port).await?;
    let mut tls = TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| handshake_failure(&e))?;
    let status = http::exchange(&mut tls, &request, tls_failure).await?;
    http::check_status(status, spec)
}

/// The name to verify and to send as SNI. An IP address (given as `host` or
/// because there is none) is verified against the certificate's IP SANs and,
/// as TLS requires, not sent as SNI.
fn server_name(address: IpAddr, host: Option<&str>) -> Result<ServerName<'static>, Failure> {
    let Some(host) = host else {
        return Ok(ServerName::IpAddress(address.into()));
    };
    let host = strip_port(host);
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned())
        .map_err(|_| Failure::Other(format!("invalid tls server name {host:?}")))
}

/// `host:port` -> `host`; leaves a bare IPv6 address alone.
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

fn handshake_failure(err: &io::Error) -> Failure {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        return Failure::Tls("connection closed during handshake".into());
    }
    tls_failure(err)
}

/// rustls reports its own errors (certificates, alerts, bad records) inside an
/// `io::Error`; everything else is a transport failure.
fn tls_failure(err: &io::Error) -> Failure {
    match err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => Failure::Tls(tls.to_string()),
        None => Failure::from_io(err),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(crypto::ring::default_provider())
}

/// Built once: loading the system store and building a config per probe would
/// cost more than the probe, and sharing one config also shares its session
/// cache, so most probes resume instead of doing a full handshake.
fn client_config(verify: bool) -> Result<Arc<ClientConfig>, Failure> {
    static VERIFYING: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    static ANY_CERT: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let config = if verify {
        VERIFYING.get_or_init(verifying_config)
    } else {
        ANY_CERT.get_or_init(any_cert_config)
    };
    config.clone().map_err(Failure::Tls)
}

fn verifying_config() -> Result<Arc<ClientConfig>, String> {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        warn!("health: reading system trust roots: {error}");
    }
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        warn!(
            "health: no trusted root certificates in the system store; verified https checks will fail"
        );
        return Err("no trusted root certificates in the system store".into());
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn any_cert_config() -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `tls_verify: false`: any certificate is accepted (a health check asks "is the
/// node serving", not "is it who it claims"). Handshake signatures are still
/// checked, so the peer must at least hold the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::super::{
        CheckKind, probe as bounded_probe,
        test_server::{Reply, TestServer, self_signed_acceptor, spec},
    };
    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    async fn server(reply: Reply) -> TestServer {
        TestServer::https(reply, self_signed_acceptor(&["waf.example", "127.0.0.1"])).await
    }

    fn https(port: u16, verify: bool) -> CheckSpec {
        let mut spec = spec(CheckKind::Https, port);
        spec.tls_verify = verify;
        spec
    }

    #[tokio::test]
    async fn self_signed_certificate_is_accepted_without_verification() {
        let server = server(Reply::Status(200)).await;
        assert_eq!(bounded_probe(LOCALHOST, &https(server.port(), false)).await, Ok(()));
        assert!(server.requests()[0].starts_with("GET /healthz HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn untrusted_self_signed_certificate_fails_verification_as_tls() {
        let server = server(Reply::Status(200)).await;
        let mut spec = https(server.port(), true);
        spec.host = Some("waf.example".into());
        let failure = bounded_probe(LOCALHOST, &spec).await.unwrap_err();
        assert!(matches!(failure, Failure::Tls(_)), "{failure:?}");
        // "invalid peer certificate: UnknownIssuer" (or, on a host without roots, their absence).
        assert!(failure.to_string().contains("certificate"), "{failure}");
        assert!(
            server.requests().is_empty(),
            "no request may be sent over an unverified connection"
        );
    }

    #[tokio::test]
    async fn status_over_tls_is_checked_like_http() {
        let server = server(Reply::Status(503)).await;
        assert_eq!(
            bounded_probe(LOCALHOST, &https(server.port(), false)).await,
            Err(Failure::Status(503))
        );
    }

    #[tokio::test]
    async fn sni_is_the_host_name_and_absent_for_ip_addresses() {
        let server = server(Reply::Status(200)).await;
        let mut spec = https(server.port(), false);
        spec.host = Some(format!("waf.example:{}", server.port()));
        assert_eq!(bounded_probe(LOCALHOST, &spec).await, Ok(()));
        spec.host = None;
        assert_eq!(bounded_probe(LOCALHOST, &spec).await, Ok(()));
        spec.host = Some("127.0.0.1".into());
        assert_eq!(bounded_probe(LOCALHOST, &spec).await, Ok(()));
        assert_eq!(server.snis(), [Some("waf.example".into()), None, None]);
        let hosts: Vec<_> = server
            .requests()
            .iter()
            .map(|r| r.lines().find(|l| l.starts_with("Host: ")).map(str::to_owned))
            .collect();
        let port = server.port();
        assert_eq!(
            hosts,
            [
                Some(format!("Host: waf.example:{port}")),
                Some(format!("Host: 127.0.0.1:{port}")),
                Some("Host: 127.0.0.1".into())
            ]
        );
    }

    #[tokio::test]
    async fn plain_http_server_on_the_https_port_is_a_tls_failure() {
        let server =
            TestServer::http(Reply::Raw(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec())).await;
        let failure = bounded_probe(LOCALHOST, &https(server.port(), false)).await.unwrap_err();
        assert!(matches!(failure, Failure::Tls(_)), "{failure:?}");
    }

    #[tokio::test]
    async fn server_closing_during_the_handshake_is_a_failure() {
        let server = TestServer::http(Reply::Close).await;
        let failure = bounded_probe(LOCALHOST, &https(server.port(), false)).await.unwrap_err();
        assert!(matches!(failure, Failure::Tls(_) | Failure::Reset), "{failure:?}");
    }

    #[test]
    fn server_name_strips_ports_and_recognises_addresses() {
        let v4 = LOCALHOST;
        let name = |host| server_name(v4, host).unwrap();
        assert_eq!(name(None), ServerName::IpAddress(v4.into()));
        assert_eq!(name(Some("waf.example")), ServerName::try_from("waf.example").unwrap());
        assert_eq!(name(Some("waf.example:8443")), ServerName::try_from("waf.example").unwrap());
        assert_eq!(
            name(Some("10.0.0.7")),
            ServerName::IpAddress(IpAddr::from([10, 0, 0, 7]).into())
        );
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(name(Some("::1")), ServerName::IpAddress(v6.into()));
        assert_eq!(name(Some("[::1]:443")), ServerName::IpAddress(v6.into()));
        assert!(server_name(v4, Some("bad name")).is_err());
    }
}
