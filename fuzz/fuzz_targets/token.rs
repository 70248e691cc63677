//! Token parsing (`crates/auth`): `Verifier::connection` and `Verifier::subscription` on fuzzer-made
//! tokens, with an HMAC key (`common::SECRET`).
//!
//! Input `[mode, rest…]`:
//! - mode bit 0 clear: `rest` is the token as a client sends it (checked if it is UTF-8, as every
//!   token arriving in a JSON string is).
//! - mode bit 0 set: `rest` is `header JSON \n claims JSON`; the target base64url-encodes both and
//!   signs them with the secret, HS256/384/512 by `(mode >> 1) % 3`, so that the claims parser is
//!   reached however the fuzzer mangles them (a random signature would stop every input at the
//!   signature check).
//!
//! Checks: no panic; a token whose header names the algorithm it was really signed with is never
//! refused for its signature or its key; an accepted token's user and expiry are its `sub` and
//! `exp`; a subscription token is accepted only for the channel and user it names.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::OnceLock;
use switchboard_auth::{TokenError, Verifier};

const CHANNEL: &str = "private:room";
const USER: &str = "alice";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(common::verifier)
}

fn signed(alg: Algorithm, header: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let key = EncodingKey::from_secret(common::SECRET.as_bytes()).expect("an HMAC key");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("HMAC signs");
    format!("{message}.{signature}")
}

/// The claims `sub`, `exp` and `channel` of `token`, as the fuzzer wrote them (for comparing with what
/// the verifier took). Only these are read: the verifier skips every other claim without decoding it
/// (serde checks neither UTF-8 nor surrogates nor number range in what it skips), so a token may carry
/// an unknown claim that no JSON parser would read as a value, such as `"x":"\ud800"` or `"x":1e400`,
/// and still be accepted. That is deliberate: unknown claims are the issuer's business and never
/// leave the server; `info`, the one claim forwarded to clients, is held to the JSON rule.
fn claims_of(token: &str) -> Option<Known> {
    let part = token.split('.').nth(1)?;
    let text = String::from_utf8_lossy(&B64URL.decode(part).ok()?).into_owned();
    let all: HashMap<String, &RawValue> = serde_json::from_str(&text).ok()?;
    let value = |name: &str| {
        all.get(name)
            .map(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
            .unwrap_or(Some(serde_json::Value::Null))
    };
    Some(Known {
        sub: value("sub")?,
        exp: value("exp")?,
        channel: value("channel")?,
    })
}

/// The claims the verifier reads and the target checks.
struct Known {
    sub: serde_json::Value,
    exp: serde_json::Value,
    channel: serde_json::Value,
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let (token, signed_with) = if mode & 1 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        (token.to_owned(), None)
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let alg =
            [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512][usize::from(mode >> 1) % 3];
        (signed(alg, header, claims), Some(alg))
    };
    let v = verifier();

    let connection = v.connection(&token);
    if let Some(alg) = signed_with {
        if jsonwebtoken::decode_header(&token).is_ok_and(|h| h.alg == alg) {
            assert!(
                !matches!(
                    connection,
                    Err(TokenError::BadSignature | TokenError::NoKey(_))
                ),
                "{token}: {connection:?}"
            );
        }
    }
    if let Ok(claims) = &connection {
        let json = claims_of(&token).expect("an accepted token's claims are JSON");
        assert_eq!(claims.user, json.sub.as_str().unwrap_or(""), "{token}");
        assert_eq!(claims.expires_at, json.exp.as_u64(), "{token}");
    }
    if let Err(e) = &connection {
        assert!(!e.to_string().is_empty());
    }

    if let Ok(_) = v.subscription(&token, CHANNEL, USER) {
        let json = claims_of(&token).expect("an accepted token's claims are JSON");
        assert_eq!(json.channel.as_str(), Some(CHANNEL), "{token}");
        assert_eq!(json.sub.as_str(), Some(USER), "{token}");
    }
});
