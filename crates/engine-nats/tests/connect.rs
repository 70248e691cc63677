//! How the engine reaches NATS: NKey authentication, TLS (server verified, client certificate
//! required) and a JetStream domain, each against a real `nats-server` configured to ask for it,
//! and each also refused when the setting is missing or wrong.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use switchboard_engine::conformance::{opts, publication};
use switchboard_engine::{Engine, HistoryQuery};
use switchboard_engine_nats::testing::NatsServer;
use switchboard_engine_nats::{NatsConfig, NatsEngine, NatsError};

fn config(servers: Vec<String>) -> NatsConfig {
    NatsConfig {
        servers,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
    }
}

/// Publishes one stored publication and reads it back: JetStream answers through this engine.
async fn works(engine: &NatsEngine) {
    let o = opts(10, Duration::from_secs(60));
    let position = engine
        .publish("ch", publication(1), &o)
        .await
        .expect("publish");
    assert_eq!(position.offset, 1);
    let history = engine
        .history("ch", &HistoryQuery::default(), &o)
        .await
        .expect("history");
    assert_eq!(history.publications.len(), 1);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

#[tokio::test]
async fn an_nkey_seed_file_authenticates_and_a_bad_one_is_named() {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
        user.public_key()
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = write(
        dir.path(),
        "user.nk",
        &format!("{}\n", user.seed().expect("seed")),
    );

    let engine = NatsEngine::connect(NatsConfig {
        nkey_seed_file: Some(seed),
        ..config(vec![nats.url()])
    })
    .await
    .expect("connect with the NKey");
    works(&engine).await;

    // Without it the server refuses us, and we say so at start.
    let err = NatsEngine::connect(config(vec![nats.url()]))
        .await
        .expect_err("no NKey, no connection");
    assert!(matches!(err, NatsError::Connect { .. }), "{err}");

    // A file that holds no seed is named, before any connection attempt.
    let bad = write(dir.path(), "bad.nk", "not a seed\n");
    let err = NatsEngine::connect(NatsConfig {
        nkey_seed_file: Some(bad.clone()),
        ..config(vec![nats.url()])
    })
    .await
    .expect_err("a bad seed file");
    let msg = err.to_string();
    assert!(
        msg.contains("nkey_seed_file") && msg.contains(&bad.display().to_string()),
        "{msg}"
    );
}

/// A CA, a certificate for 127.0.0.1 signed by it (for the server), and one for a client.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        write(dir.path(), "ca.pem", &ca.pem());
        for (name, san) in [("server", "127.0.0.1"), ("client", "client")] {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(vec![san.to_owned()])
                .expect("params")
                .signed_by(&key, &ca)
                .expect("sign");
            write(dir.path(), &format!("{name}.pem"), &cert.pem());
            write(dir.path(), &format!("{name}-key.pem"), &key.serialize_pem());
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[tokio::test]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let nats = NatsServer::start_with_config(&format!(
        "tls {{\n cert_file: {:?}\n key_file: {:?}\n ca_file: {:?}\n verify: true\n timeout: 2\n}}\n",
        pki.path("server.pem"),
        pki.path("server-key.pem"),
        pki.path("ca.pem"),
    ));
    let tls = |cert: bool| NatsConfig {
        tls_ca_file: Some(pki.path("ca.pem")),
        tls_cert_file: cert.then(|| pki.path("client.pem")),
        tls_key_file: cert.then(|| pki.path("client-key.pem")),
        tls_required: true,
        ..config(vec![nats.url()])
    };

    let engine = NatsEngine::connect(tls(true))
        .await
        .expect("connect over TLS with a client certificate");
    works(&engine).await;

    // The server verifies clients: no certificate, no connection.
    let err = NatsEngine::connect(tls(false))
        .await
        .expect_err("no client certificate");
    assert!(matches!(err, NatsError::Connect { .. }), "{err}");

    // The server's certificate is not trusted without our CA.
    let err = NatsEngine::connect(NatsConfig {
        tls_ca_file: None,
        ..tls(true)
    })
    .await
    .expect_err("an unknown CA");
    assert!(matches!(err, NatsError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn tls_required_refuses_a_server_without_tls() {
    let nats = NatsServer::start();
    let err = NatsEngine::connect(NatsConfig {
        tls_required: true,
        ..config(vec![nats.url()])
    })
    .await
    .expect_err("plain text refused");
    assert!(matches!(err, NatsError::Connect { .. }), "{err}");
    // Without the requirement the same server is fine.
    works(
        &NatsEngine::connect(config(vec![nats.url()]))
            .await
            .expect("plain"),
    )
    .await;
}

#[tokio::test]
async fn a_jetstream_domain_is_used_for_every_jetstream_request() {
    let nats = NatsServer::start_with_config("jetstream { domain: hub }\n");
    let engine = NatsEngine::connect(NatsConfig {
        jetstream_domain: Some("hub".into()),
        ..config(vec![nats.url()])
    })
    .await
    .expect("connect in domain hub");
    works(&engine).await;
    assert!(engine.ready(), "readiness asks JetStream in the domain");

    // Another domain has no JetStream here: refused at start, saying JetStream.
    let err = NatsEngine::connect(NatsConfig {
        jetstream_domain: Some("elsewhere".into()),
        ..config(vec![nats.url()])
    })
    .await
    .expect_err("no JetStream in that domain");
    assert!(err.to_string().contains("JetStream"), "{err}");
}
