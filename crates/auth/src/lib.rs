//! Identity, told once: connection tokens and subscription tokens (JWT), verified when a client
//! connects or subscribes, never on every message. Knows nothing about HTTP or the protocol.
//!
//! # Brief overview
//!
//! - [`AuthConfig`] names the keys: an HMAC secret (HS256/384/512), PEM public keys (RS256/384/512,
//!   ES256/384, EdDSA), and/or a JWKS document whose keys are picked by `kid`; optional `aud`/`iss`.
//! - [`Verifier::connection`] checks a connection token and returns [`ConnectionClaims`]: the user
//!   (`sub`), the expiry (`exp`), presence info (`info`) and server-side channels (`channels`).
//! - [`Verifier::subscription`] checks a subscription token for a private channel.
//!
//! A token's `alg` chooses the key *family*; a token can never be checked with a key of another
//! family (an RS256 public key used as an HMAC secret is the classic forgery), and `alg: none` is
//! refused by the parser.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where token keys come from, and which claims must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256, HS384 and HS512 tokens.
    pub hmac_secret: Option<String>,
    /// RSA public key (PEM text, or a path to a PEM file) for RS256, RS384, RS512.
    pub rsa_public_key: Option<String>,
    /// ECDSA public key (PEM text or path) for ES256 and ES384.
    pub ecdsa_public_key: Option<String>,
    /// Ed25519 public key (PEM text or path) for EdDSA.
    pub ed25519_public_key: Option<String>,
    /// A JWKS document (RFC 7517) on disk; a token whose header has a `kid` is checked with that key.
    pub jwks_file: Option<PathBuf>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl AuthConfig {
    /// Whether any key is configured (without one, no token can be verified).
    pub fn has_keys(&self) -> bool {
        self.hmac_secret.is_some()
            || self.rsa_public_key.is_some()
            || self.ecdsa_public_key.is_some()
            || self.ed25519_public_key.is_some()
            || self.jwks_file.is_some()
    }
}

/// A key that cannot be loaded; named so the operator can fix the configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read.
    #[error("auth.{setting}: cannot read {path}: {source}")]
    Read {
        /// The setting.
        setting: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key or document does not parse.
    #[error("auth.{setting}: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
}

/// Why a token was refused. Each maps to the protocol's codes (see docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or `alg: none`, or claims of the wrong type.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// No configured key can check this token's algorithm (or its `kid` is unknown).
    #[error("no key configured for algorithm {0}")]
    NoKey(String),
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `aud` does not match.
    #[error("token audience does not match")]
    WrongAudience,
    /// `iss` does not match.
    #[error("token issuer does not match")]
    WrongIssuer,
    /// A subscription token for another channel or user.
    #[error("subscription token is for another channel or user")]
    WrongSubscription,
    /// A valid token without `"admin": true`, offered to the operator's console.
    #[error("token has no \"admin\": true claim")]
    NotAdmin,
}

/// What a connection token says.
#[derive(Debug, Clone)]
pub struct ConnectionClaims {
    /// The user (`sub`); empty for an anonymous token.
    pub user: String,
    /// Unix seconds when the connection must have refreshed its token (`exp`); `None`: never.
    pub expires_at: Option<u64>,
    /// Presence info (`info`), raw JSON.
    pub info: Option<Box<RawValue>>,
    /// Channels to subscribe the connection to on connect (`channels`).
    pub channels: Vec<String>,
}

/// What a subscription token says.
#[derive(Debug, Clone)]
pub struct SubscriptionClaims {
    /// When the subscription must be refreshed (`exp`).
    pub expires_at: Option<u64>,
    /// Channel-specific info (`info`), raw JSON.
    pub info: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    /// Any JSON: a connection token may carry an application's own `admin` claim of another type;
    /// only `true` opens the console.
    #[serde(default)]
    admin: Option<serde_json::Value>,
}

/// Checks tokens against the configured keys.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    ed: Option<DecodingKey>,
    /// JWKS keys by `kid`, converted once at load.
    jwks: Vec<(String, DecodingKey)>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ec", &self.ec.is_some())
            .field("ed", &self.ed.is_some())
            .field("jwks", &self.jwks.len())
            .finish_non_exhaustive()
    }
}

/// Reads PEM text given inline or as a file path.
fn pem(setting: &'static str, value: &str) -> Result<Vec<u8>, KeyError> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value).map_err(|source| KeyError::Read {
        setting,
        path: value.to_owned(),
        source,
    })
}

fn invalid(setting: &'static str) -> impl Fn(jsonwebtoken::errors::Error) -> KeyError {
    move |e| KeyError::Invalid {
        setting,
        reason: e.to_string(),
    }
}

impl Verifier {
    /// Loads the configured keys.
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        let hmac = config
            .hmac_secret
            .as_deref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()))
            .transpose()
            .map_err(invalid("hmac_secret"))?;
        let rsa = match &config.rsa_public_key {
            Some(v) => Some(
                DecodingKey::from_rsa_pem(&pem("rsa_public_key", v)?)
                    .map_err(invalid("rsa_public_key"))?,
            ),
            None => None,
        };
        let ec = match &config.ecdsa_public_key {
            Some(v) => Some(
                DecodingKey::from_ec_pem(&pem("ecdsa_public_key", v)?)
                    .map_err(invalid("ecdsa_public_key"))?,
            ),
            None => None,
        };
        let ed = match &config.ed25519_public_key {
            Some(v) => Some(
                DecodingKey::from_ed_pem(&pem("ed25519_public_key", v)?)
                    .map_err(invalid("ed25519_public_key"))?,
            ),
            None => None,
        };
        let jwks = match &config.jwks_file {
            Some(path) => {
                let text = std::fs::read(path).map_err(|source| KeyError::Read {
                    setting: "jwks_file",
                    path: path.display().to_string(),
                    source,
                })?;
                let set: JwkSet = serde_json::from_slice(&text).map_err(|e| KeyError::Invalid {
                    setting: "jwks_file",
                    reason: e.to_string(),
                })?;
                let mut keys = Vec::new();
                for jwk in &set.keys {
                    let Some(kid) = jwk.common.key_id.clone() else {
                        return Err(KeyError::Invalid {
                            setting: "jwks_file",
                            reason: "every key needs a kid".into(),
                        });
                    };
                    keys.push((
                        kid,
                        DecodingKey::from_jwk(jwk).map_err(invalid("jwks_file"))?,
                    ));
                }
                keys
            }
            None => Vec::new(),
        };
        Ok(Self {
            hmac,
            rsa,
            ec,
            ed,
            jwks,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway: config.leeway_secs,
        })
    }

    /// Verifies a connection token.
    pub fn connection(&self, token: &str) -> Result<ConnectionClaims, TokenError> {
        let c = self.verify(token)?;
        Ok(ConnectionClaims {
            user: c.sub,
            expires_at: c.exp,
            info: c.info,
            channels: c.channels,
        })
    }

    /// Verifies a subscription token for `channel`, issued to `user`.
    pub fn subscription(
        &self,
        token: &str,
        channel: &str,
        user: &str,
    ) -> Result<SubscriptionClaims, TokenError> {
        let c = self.verify(token)?;
        if c.channel.as_deref() != Some(channel) || c.sub != user {
            return Err(TokenError::WrongSubscription);
        }
        Ok(SubscriptionClaims {
            expires_at: c.exp,
            info: c.info,
        })
    }

    /// Verifies a token for the operator's console: any token the configured keys sign, as long as
    /// it carries `"admin": true`, so that the backend issuing connection tokens can issue console
    /// logins too, and a leaked connection token opens nothing. The user (`sub`) for the audit log.
    pub fn admin(&self, token: &str) -> Result<String, TokenError> {
        let c = self.verify(token)?;
        if c.admin != Some(serde_json::Value::Bool(true)) {
            return Err(TokenError::NotAdmin);
        }
        Ok(c.sub)
    }

    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let alg = header.alg;
        let key = self.key_for(alg, header.kid.as_deref())?;
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        if self.audience.is_some() {
            validation.required_spec_claims.insert("aud".into());
        }
        let claims = decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                    TokenError::NoKey(format!("{alg:?}"))
                }
                _ => TokenError::Malformed(e.to_string()),
            })?;
        // `info` reaches other clients as it came (presence, join/leave): the JSON rule holds for it
        // as for every JSON switchboard forwards.
        if let Some(info) = &claims.info {
            switchboard_protocol::json::check(info.get())
                .map_err(|e| TokenError::Malformed(format!("info claim: {e}")))?;
        }
        Ok(claims)
    }

    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, TokenError> {
        use jsonwebtoken::AlgorithmFamily as F;
        let family = alg.family();
        if let Some(kid) = kid.filter(|_| !self.jwks.is_empty()) {
            let (_, key) = self
                .jwks
                .iter()
                .find(|(k, _)| k == kid)
                .ok_or_else(|| TokenError::NoKey(format!("kid {kid:?}")))?;
            // A JWKS key is used only for its own family.
            return if key.family() == family {
                Ok(key)
            } else {
                Err(TokenError::NoKey(format!("{alg:?} with kid {kid:?}")))
            };
        }
        let key = match family {
            F::Hmac => self.hmac.as_ref(),
            F::Rsa if matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) => {
                self.rsa.as_ref()
            }
            F::Rsa => None,
            F::Ec => self.ec.as_ref(),
            F::Ed => self.ed.as_ref(),
        };
        key.ok_or_else(|| TokenError::NoKey(format!("{alg:?}")))
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
