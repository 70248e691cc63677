//! TLS on the client listener, through the real binary: WebSocket over TLS with a generated
//! self-signed certificate, and a new certificate taken on SIGHUP while an open connection keeps going.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::process::*;
use common::{decode, encode};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Accepts any certificate and remembers the one presented: the test checks *which* certificate the
/// server uses, not a chain of trust.
#[derive(Debug)]
struct Remember {
    seen: Mutex<Option<Vec<u8>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Remember {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Writes a fresh self-signed certificate for localhost; returns its DER.
fn write_cert(cert_file: &Path, key_file: &Path) -> Vec<u8> {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    // Write-then-rename, as certificate tools do, so the server never reads half a file.
    let tmp = cert_file.with_extension("tmp");
    std::fs::write(&tmp, c.cert.pem()).unwrap();
    std::fs::write(key_file, c.signing_key.serialize_pem()).unwrap();
    std::fs::rename(&tmp, cert_file).unwrap();
    c.cert.der().to_vec()
}

/// Opens a TLS connection and a WebSocket on `/echo`; returns it with the certificate presented.
async fn open(addr: std::net::SocketAddr) -> (TlsStream<TcpStream>, Vec<u8>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Remember {
        seen: Mutex::new(None),
        provider: Arc::clone(&provider),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            common::KEY
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let seen = verifier.seen.lock().unwrap().clone().unwrap();
    (tls, seen)
}

async fn echo(tls: &mut TlsStream<TcpStream>, text: &str) {
    tls.write_all(&encode(true, false, 1, text.as_bytes(), true))
        .await
        .unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some((frame, _)) = decode(&buf) {
            assert_eq!(frame.payload, text.as_bytes());
            return;
        }
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn websocket_over_tls_and_a_new_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = write_cert(&cert, &key);
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    let (mut child, addr) = spawn(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--echo",
        ],
        &[],
    );
    let (mut old, presented) = open(addr).await;
    assert_eq!(presented, first);
    echo(&mut old, "over TLS").await;

    // Plain HTTP on the TLS port gets nowhere.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/1.1 101"));

    let second = write_cert(&cert, &key);
    assert_ne!(first, second);
    signal(&child, "HUP");
    // The reload happens on the server's own time; new handshakes see it within a moment.
    let mut presented = first.clone();
    for _ in 0..50 {
        let (_, p) = open(addr).await;
        presented = p;
        if presented == second {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(presented, second, "new handshakes get the new certificate");
    // The connection made before the reload is untouched.
    echo(&mut old, "still here after SIGHUP").await;

    // A broken file on SIGHUP keeps the current certificate and the server running.
    std::fs::write(&cert, "not a certificate").unwrap();
    signal(&child, "HUP");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (mut fresh, p) = open(addr).await;
    assert_eq!(p, second);
    echo(&mut fresh, "after a failed reload").await;
    echo(&mut old, "and the old one too").await;

    sigterm(&child);
    assert_eq!(wait_exit(&mut child), 0);
}
