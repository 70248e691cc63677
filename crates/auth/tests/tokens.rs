//! Connection and subscription tokens signed with every supported algorithm, and every way a token
//! must be refused.

#![allow(clippy::unwrap_used)]

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchboard_auth::{AuthConfig, TokenError, Verifier, now};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
const SECRET: &str = "a-long-random-hmac-secret-for-tests";

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).unwrap()
}

fn pem_path(name: &str) -> String {
    format!("{KEYS}/{name}")
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(SECRET.as_bytes()).unwrap()
        }
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
            EncodingKey::from_rsa_pem(&key("rsa.key")).unwrap()
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key("ec256.pk8")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&key("ec384.pk8")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&key("ed.key")).unwrap(),
        other => panic!("{other:?}"),
    };
    encode(&Header::new(alg), claims, &key).unwrap()
}

fn all_keys() -> AuthConfig {
    AuthConfig {
        hmac_secret: Some(SECRET.into()),
        rsa_public_key: Some(pem_path("rsa.pub")),
        ecdsa_public_key: Some(pem_path("ec256.pub")),
        ed25519_public_key: Some(String::from_utf8(key("ed.pub")).unwrap()),
        ..Default::default()
    }
}

#[test]
fn every_algorithm_verifies() {
    let v = Verifier::new(&all_keys()).unwrap();
    let mut es384 = all_keys();
    es384.ecdsa_public_key = Some(pem_path("ec384.pub"));
    let v384 = Verifier::new(&es384).unwrap();
    let claims =
        json!({"sub": "alice", "exp": now() + 60, "info": {"name": "Alice"}, "channels": ["news"]});
    for alg in [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let c = v
            .connection(&sign(alg, &claims))
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(c.user, "alice");
        assert_eq!(c.channels, ["news"]);
        assert_eq!(c.info.unwrap().get(), r#"{"name":"Alice"}"#);
        assert!(c.expires_at.is_some());
    }
    assert_eq!(
        v384.connection(&sign(Algorithm::ES384, &claims))
            .unwrap()
            .user,
        "alice"
    );
    // No exp: a connection that never expires.
    assert_eq!(
        v.connection(&sign(Algorithm::HS256, &json!({"sub": "bob"})))
            .unwrap()
            .expires_at,
        None
    );
}

#[test]
fn refused_tokens_say_why() {
    let v = Verifier::new(&all_keys()).unwrap();
    let ok = json!({"sub": "alice", "exp": now() + 60});
    // alg: none.
    let header = base64url(r#"{"alg":"none","typ":"JWT"}"#);
    let body = base64url(&ok.to_string());
    assert!(matches!(
        v.connection(&format!("{header}.{body}.")),
        Err(TokenError::Malformed(_))
    ));
    // A wrong signature.
    let mut forged = sign(Algorithm::HS256, &ok);
    forged.pop();
    forged.push('A');
    let forged2 = {
        let parts: Vec<&str> = forged.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            base64url(&json!({"sub": "mallory", "exp": now() + 60}).to_string()),
            parts[2]
        )
    };
    assert_eq!(
        v.connection(&forged2).unwrap_err(),
        TokenError::BadSignature
    );
    // Expired, and not yet valid.
    assert_eq!(
        v.connection(&sign(
            Algorithm::HS256,
            &json!({"sub": "a", "exp": now() - 10})
        ))
        .unwrap_err(),
        TokenError::Expired
    );
    assert_eq!(
        v.connection(&sign(
            Algorithm::HS256,
            &json!({"sub": "a", "nbf": now() + 600})
        ))
        .unwrap_err(),
        TokenError::NotYetValid
    );
    // A key of the wrong type: only HMAC configured, an RS256 token comes.
    let hmac_only = Verifier::new(&AuthConfig {
        hmac_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap();
    assert!(matches!(
        hmac_only.connection(&sign(Algorithm::RS256, &ok)),
        Err(TokenError::NoKey(_))
    ));
    // The classic confusion: an HS256 token whose secret is the RSA public key must not verify.
    let rsa_only = Verifier::new(&AuthConfig {
        rsa_public_key: Some(pem_path("rsa.pub")),
        ..Default::default()
    })
    .unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &ok,
        &EncodingKey::from_secret(&key("rsa.pub")).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        rsa_only.connection(&confused),
        Err(TokenError::NoKey(_))
    ));
    // Garbage.
    assert!(matches!(
        v.connection("not a token"),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn audience_and_issuer() {
    let v = Verifier::new(&AuthConfig {
        hmac_secret: Some(SECRET.into()),
        audience: Some("switchboard".into()),
        issuer: Some("https://auth.example.com".into()),
        ..Default::default()
    })
    .unwrap();
    let good = json!({"sub": "a", "aud": "switchboard", "iss": "https://auth.example.com"});
    assert!(v.connection(&sign(Algorithm::HS256, &good)).is_ok());
    let wrong_aud = json!({"sub": "a", "aud": "other", "iss": "https://auth.example.com"});
    assert_eq!(
        v.connection(&sign(Algorithm::HS256, &wrong_aud))
            .unwrap_err(),
        TokenError::WrongAudience
    );
    let no_aud = json!({"sub": "a", "iss": "https://auth.example.com"});
    assert_eq!(
        v.connection(&sign(Algorithm::HS256, &no_aud)).unwrap_err(),
        TokenError::WrongAudience
    );
    let wrong_iss = json!({"sub": "a", "aud": "switchboard", "iss": "https://evil.example.com"});
    assert_eq!(
        v.connection(&sign(Algorithm::HS256, &wrong_iss))
            .unwrap_err(),
        TokenError::WrongIssuer
    );
}

#[test]
fn jwks_keys_are_picked_by_kid() {
    let rsa = EncodingKey::from_rsa_pem(&key("rsa.key")).unwrap();
    let mut jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap(),
    )
    .unwrap();
    let v = Verifier::new(&AuthConfig {
        jwks_file: Some(path),
        ..Default::default()
    })
    .unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = encode(&header, &json!({"sub": "carol"}), &rsa).unwrap();
    assert_eq!(v.connection(&token).unwrap().user, "carol");
    header.kid = Some("k2".into());
    let token = encode(&header, &json!({"sub": "carol"}), &rsa).unwrap();
    assert!(matches!(v.connection(&token), Err(TokenError::NoKey(_))));
}

#[test]
fn subscription_tokens_name_their_channel_and_user() {
    let v = Verifier::new(&all_keys()).unwrap();
    let t = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "channel": "secret:room"}),
    );
    assert!(v.subscription(&t, "secret:room", "alice").is_ok());
    assert_eq!(
        v.subscription(&t, "secret:other", "alice").unwrap_err(),
        TokenError::WrongSubscription
    );
    assert_eq!(
        v.subscription(&t, "secret:room", "bob").unwrap_err(),
        TokenError::WrongSubscription
    );
}

#[test]
fn console_tokens_need_the_admin_claim() {
    let v = Verifier::new(&all_keys()).unwrap();
    let admin = sign(Algorithm::ES256, &json!({"sub": "ops", "admin": true}));
    assert_eq!(v.admin(&admin).unwrap(), "ops");
    let user = sign(Algorithm::HS256, &json!({"sub": "alice"}));
    assert_eq!(v.admin(&user).unwrap_err(), TokenError::NotAdmin);
    let not_true = sign(Algorithm::HS256, &json!({"sub": "alice", "admin": false}));
    assert_eq!(v.admin(&not_true).unwrap_err(), TokenError::NotAdmin);
    // Only the boolean: an application's own `admin` claim of another type opens nothing, and
    // still leaves the token good for connecting.
    let string = sign(Algorithm::HS256, &json!({"sub": "alice", "admin": "true"}));
    assert_eq!(v.admin(&string).unwrap_err(), TokenError::NotAdmin);
    assert_eq!(v.connection(&string).unwrap().user, "alice");
    let expired = sign(
        Algorithm::HS256,
        &json!({"sub": "ops", "admin": true, "exp": now() - 3600}),
    );
    assert_eq!(v.admin(&expired).unwrap_err(), TokenError::Expired);
}

fn base64url(s: &str) -> String {
    use std::fmt::Write;
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let _ = write!(out, "{}", T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn info_breaking_the_json_rule_is_refused() {
    let v = Verifier::new(&all_keys()).unwrap();
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    // Signed raw claims: serde_json's `Value` cannot even hold these texts.
    let raw = |claims: &str| {
        let claims = serde_json::value::RawValue::from_string(claims.to_owned()).unwrap();
        encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    };
    for (info, says) in [
        (r#"{"n":1e400}"#, "out of the range"),
        (r#"{"name":"\ud800"}"#, "surrogate"),
        (r#"{"id":18446744073709551615}"#, "JavaScript"),
    ] {
        let token = raw(&format!(r#"{{"sub":"ann","info":{info}}}"#));
        match v.connection(&token) {
            Err(TokenError::Malformed(m)) => assert!(m.contains(says), "{info}: {m}"),
            other => panic!("{info}: {other:?}"),
        }
    }
    let token = raw(r#"{"sub":"ann","info":{"name":"\ud83d\ude00","n":1.5e300}}"#);
    assert!(v.connection(&token).is_ok());
}

/// Claims switchboard does not know are the issuer's business: they never leave the server, so they
/// are skipped unread and a token is not refused for them, even when no JSON parser could read them as
/// values (an int64 id, a lone surrogate). The fuzz target `token` relies on this.
#[test]
fn unknown_claims_are_not_held_to_the_json_rule() {
    let v = Verifier::new(&all_keys()).unwrap();
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    for extra in [
        r#""x":"\ud800""#,
        r#""x":1e400"#,
        r#""uid":18446744073709551615"#,
    ] {
        let claims =
            serde_json::value::RawValue::from_string(format!(r#"{{"sub":"ann",{extra}}}"#))
                .unwrap();
        let token = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        let claims = v
            .connection(&token)
            .unwrap_or_else(|e| panic!("{extra}: {e}"));
        assert_eq!(claims.user, "ann");
    }
}
