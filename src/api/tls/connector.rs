//! Outgoing mutual TLS: a connector that dials TCP and verifies the server
//! against the component's CA and CRLs.
//!
//! tonic's own client TLS takes CA certificates but no revocation lists, so
//! `https://` endpoints are dialled here and tonic is handed the finished TLS
//! stream. The server's certificate must name the endpoint's host (DNS name
//! or IP address) and must not be revoked by `tls_crl`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

use super::{
    load_certs, load_key, parse_err, provider, secret_files, SecretKind, TlsError, TlsFiles, Trust,
};

/// Verifies servers against a [`Trust`], looking at its files at each handshake.
#[derive(Debug)]
struct ServerVerifier(Trust);

impl ServerVerifier {
    fn current(&self) -> Arc<dyn ServerCertVerifier> {
        self.0.current().servers().clone()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Dials `host:port` of the URI it is given and runs a TLS handshake over
/// it, presenting the component's certificate (a tower service for
/// `Endpoint::connect_with_connector`).
#[derive(Clone)]
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
}

impl TlsConnector {
    /// A connector for `files`, read now (and the trust again at each
    /// handshake): an unreadable file, or one others could change (or, for
    /// the key, read), is an error naming it.
    pub fn new(files: &TlsFiles) -> Result<TlsConnector, TlsError> {
        secret_files::check(&files.cert, SecretKind::Trust, "certificate file")?;
        secret_files::check(&files.key, SecretKind::Private, "private key")?;
        let trust = files.trust()?;
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier(trust)))
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                parse_err(
                    &files.key,
                    format!("does not match {}: {e}", files.cert.display()),
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsConnector {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.connector.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {uri}"))
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            // An IPv6 address comes bracketed in the URI, not in the name.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| invalid("not a DNS name or IP address"))?;
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(connector.connect(name, tcp).await?))
        })
    }
}
