//! The opening handshake (RFC 6455 §4.2): checking an HTTP upgrade request and building the
//! `101 Switching Protocols` answer. Independent of the HTTP server: it reads `http::Request` parts.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use sha1::{Digest, Sha1};

use crate::config::Config;
use crate::deflate::{self, DeflateParams};

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request was refused. Each maps to a status and a one-line reason for the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a GET request.
    #[error("WebSocket handshake must use GET, not {0}")]
    Method(Method),
    /// HTTP/1.0 or older.
    #[error("WebSocket handshake needs HTTP/1.1")]
    Version,
    /// No `Upgrade: websocket`.
    #[error("missing `Upgrade: websocket` header")]
    Upgrade,
    /// No `upgrade` token in `Connection`.
    #[error("missing `Connection: Upgrade` header")]
    Connection,
    /// No `Sec-WebSocket-Key`, or not 16 bytes in base64.
    #[error("Sec-WebSocket-Key must be 16 bytes in base64")]
    Key,
    /// `Sec-WebSocket-Version` other than 13 (or missing).
    #[error("unsupported Sec-WebSocket-Version; this server speaks 13")]
    WebSocketVersion,
    /// The page's origin is not allowed to connect.
    #[error("origin {0:?} is not allowed")]
    Origin(String),
}

impl HandshakeError {
    /// The status to answer with: 426 for a version mismatch, 403 for a refused origin, else 400.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::WebSocketVersion => StatusCode::UPGRADE_REQUIRED,
            Self::Origin(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A complete error response with the reason as a plain-text body.
    pub fn response(&self) -> Response<String> {
        let mut resp = Response::new(format!("{self}\n"));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(self, Self::WebSocketVersion) {
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        resp
    }
}

/// A request that passed every check, with what was negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    accept_key: String,
    /// The chosen subprotocol, if the client offered one the endpoint speaks.
    pub protocol: Option<String>,
    /// The permessage-deflate parameters, if agreed.
    pub deflate: Option<DeflateParams>,
    deflate_response: Option<String>,
}

impl Accepted {
    /// The `101 Switching Protocols` response (empty body) to send before switching.
    pub fn response(&self) -> Response<()> {
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        // The accept key is base64 and the others were taken from valid header values or built from
        // ASCII tokens, so these conversions cannot fail; a failure would only drop the header.
        if let Ok(v) = HeaderValue::from_str(&self.accept_key) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(Ok(v)) = self.protocol.as_deref().map(HeaderValue::from_str) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
        if let Some(Ok(v)) = self.deflate_response.as_deref().map(HeaderValue::from_str) {
            h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
        }
        resp
    }
}

/// Checks an upgrade request against RFC 6455 §4.2.1 and the endpoint's policy.
pub fn accept<B>(req: &Request<B>, config: &Config) -> Result<Accepted, HandshakeError> {
    if req.method() != Method::GET {
        return Err(HandshakeError::Method(req.method().clone()));
    }
    if req.version() < Version::HTTP_11 {
        return Err(HandshakeError::Version);
    }
    let headers = req.headers();
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::Upgrade);
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Connection);
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::WebSocketVersion),
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.as_bytes().trim_ascii(),
        _ => return Err(HandshakeError::Key),
    };
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::Key),
    }
    check_origin(headers, &config.allowed_origins)?;

    let protocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|offered| config.subprotocols.iter().any(|p| p == offered))
        .map(str::to_owned);
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (deflate, deflate_response) = match deflate::negotiate(offers, &config.compression) {
        Some((params, response)) => (Some(params), Some(response)),
        None => (None, None),
    };
    Ok(Accepted {
        accept_key: accept_key(key),
        protocol,
        deflate,
        deflate_response,
    })
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    BASE64.encode(sha.finalize())
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a request's `Origin` passes the policy `allowed` (as [`Config::allowed_origins`]
/// describes it); requests without `Origin` pass. Other HTTP endpoints (the fallback transports'
/// CORS) share the WebSocket handshake's policy through this.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    check_origin(headers, allowed).is_ok()
}

fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), HandshakeError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let refuse = || HandshakeError::Origin(String::from_utf8_lossy(origin.as_bytes()).into_owned());
    if allowed.iter().any(|a| a == "*") {
        return Ok(());
    }
    let origin = origin
        .to_str()
        .ok()
        .and_then(Origin::parse)
        .ok_or_else(refuse)?;
    // The server's own origin (the host and port the request came to) is always allowed: listing
    // other origins must not lock out the server's own pages.
    let own = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| origin.matches_host(host));
    let ok = own
        || allowed
            .iter()
            .any(|pattern| origin.matches_pattern(pattern));
    if ok { Ok(()) } else { Err(refuse()) }
}

/// A serialized origin `scheme://host[:port]`, lowercased, with the scheme's default port filled in.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn parse(s: &str) -> Option<Self> {
        let (scheme, rest) = s.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => 0,
        };
        let (host, port) = split_host_port(rest.trim_end_matches('/'), default_port)?;
        Some(Self { scheme, host, port })
    }

    /// Same origin as the request's `Host` header (the port defaults to the origin scheme's).
    fn matches_host(&self, host_header: &str) -> bool {
        split_host_port(host_header.trim(), self.port)
            .is_some_and(|(h, p)| h == self.host && p == self.port)
    }

    fn matches_pattern(&self, pattern: &str) -> bool {
        let Some(p) = Origin::parse(pattern) else {
            return false;
        };
        if p.scheme != self.scheme || p.port != self.port {
            return false;
        }
        match p.host.strip_prefix("*.") {
            Some(domain) => {
                self.host.len() > domain.len() + 1 && self.host.ends_with(&format!(".{domain}"))
            }
            None => p.host == self.host,
        }
    }
}

fn split_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    if s.is_empty() || s.contains('/') || s.contains('@') {
        return None;
    }
    // IPv6 literals are bracketed, so the port is whatever follows the closing bracket.
    let (host, port) = match s.rfind(']') {
        Some(end) => match &s[end + 1..] {
            "" => (s, None),
            p => (&s[..=end], Some(p.strip_prefix(':')?)),
        },
        None => match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/echo")
            .header("Host", "example.com:8080")
            .header("Upgrade", "WebSocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn without(name: &str) -> Request<()> {
        let mut r = request(&[]);
        r.headers_mut().remove(name);
        r
    }

    #[test]
    fn rfc_example_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let a = accept(&request(&[]), &Config::default()).unwrap();
        let resp = a.response();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            resp.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(resp.headers().get("sec-websocket-protocol").is_none());
    }

    #[test]
    fn refuses_each_broken_part() {
        let cfg = Config::default();
        let mut post = request(&[]);
        *post.method_mut() = Method::POST;
        assert_eq!(
            accept(&post, &cfg).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let mut old = request(&[]);
        *old.version_mut() = Version::HTTP_10;
        assert_eq!(accept(&old, &cfg), Err(HandshakeError::Version));
        assert_eq!(
            accept(&without("upgrade"), &cfg),
            Err(HandshakeError::Upgrade)
        );
        assert_eq!(
            accept(&without("connection"), &cfg),
            Err(HandshakeError::Connection)
        );
        assert_eq!(
            accept(&without("sec-websocket-key"), &cfg),
            Err(HandshakeError::Key)
        );
        let mut short = without("sec-websocket-key");
        short
            .headers_mut()
            .insert("sec-websocket-key", HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(accept(&short, &cfg), Err(HandshakeError::Key));
        let mut v8 = without("sec-websocket-version");
        v8.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        let err = accept(&v8, &cfg).unwrap_err();
        assert_eq!(err.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(err.response().headers()["sec-websocket-version"], "13");
        assert_eq!(
            accept(&without("sec-websocket-version"), &cfg),
            Err(HandshakeError::WebSocketVersion)
        );
    }

    #[test]
    fn picks_the_first_offered_known_subprotocol() {
        let cfg = Config {
            subprotocols: vec!["chat".into(), "switchboard.json".into()],
            ..Config::default()
        };
        let a = accept(
            &request(&[("Sec-WebSocket-Protocol", "v2.bogus, switchboard.json, chat")]),
            &cfg,
        )
        .unwrap();
        assert_eq!(a.protocol.as_deref(), Some("switchboard.json"));
        let a = accept(&request(&[("Sec-WebSocket-Protocol", "superchat")]), &cfg).unwrap();
        assert_eq!(a.protocol, None);
    }

    #[test]
    fn origin_policy() {
        let same = Config::default();
        for ok in ["http://example.com:8080", "HTTPS://Example.com:8080"] {
            assert!(accept(&request(&[("Origin", ok)]), &same).is_ok(), "{ok}");
        }
        for bad in [
            "http://evil.com:8080",
            "http://example.com",
            "null",
            "http://example.com:8080.evil.com",
        ] {
            assert_eq!(
                accept(&request(&[("Origin", bad)]), &same)
                    .unwrap_err()
                    .status(),
                StatusCode::FORBIDDEN,
                "{bad}"
            );
        }
        let list = Config {
            allowed_origins: vec![
                "https://app.example.org".into(),
                "https://*.example.net".into(),
            ],
            ..Config::default()
        };
        for ok in [
            "https://app.example.org",
            "https://app.example.org:443",
            "https://a.b.example.net",
        ] {
            assert!(accept(&request(&[("Origin", ok)]), &list).is_ok(), "{ok}");
        }
        // The server's own origin stays allowed whatever the list says.
        assert!(accept(&request(&[("Origin", "http://example.com:8080")]), &list).is_ok());
        for bad in [
            "http://app.example.org",
            "https://example.net",
            "https://evilexample.net",
            "https://app.example.org:8443",
            "http://example.com",
        ] {
            assert!(
                accept(&request(&[("Origin", bad)]), &list).is_err(),
                "{bad}"
            );
        }
        let any = Config {
            allowed_origins: vec!["*".into()],
            ..Config::default()
        };
        assert!(accept(&request(&[("Origin", "null")]), &any).is_ok());
        // IPv6 hosts compare with their brackets and ports.
        let mut v6 = request(&[("Origin", "http://[::1]:9000")]);
        v6.headers_mut()
            .insert("host", HeaderValue::from_static("[::1]:9000"));
        assert!(accept(&v6, &same).is_ok());
    }

    #[test]
    fn deflate_is_negotiated() {
        let a = accept(
            &request(&[(
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            )]),
            &Config::default(),
        )
        .unwrap();
        assert!(a.deflate.is_some());
        assert_eq!(
            a.response().headers()["sec-websocket-extensions"],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }
}
