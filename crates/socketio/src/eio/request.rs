//! The query of an Engine.IO HTTP request (`EIO`, `transport`, `sid`) and the error answers of the
//! reference server (`engine.io` v6), which clients and the official suite expect: HTTP 400 (403 for
//! `Forbidden`) with the body `{"code":N,"message":"..."}`.

use thiserror::Error;

use super::packet::PacketError;

/// The Engine.IO transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// HTTP long-polling: GET receives, POST sends.
    Polling,
    /// One WebSocket connection.
    WebSocket,
}

impl Transport {
    /// The name in the `transport` query parameter and in the handshake's `upgrades`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::WebSocket => "websocket",
        }
    }
}

/// The HTTP methods Engine.IO tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET: a handshake, a poll, or a WebSocket upgrade.
    Get,
    /// POST: packets from the client.
    Post,
    /// Anything else (OPTIONS preflights are CORS's business, before Engine.IO sees the request).
    Other,
}

impl Method {
    /// Classifies an HTTP method name.
    pub fn from_name(name: &str) -> Self {
        match name {
            "GET" => Self::Get,
            "POST" => Self::Post,
            _ => Self::Other,
        }
    }
}

/// A verified Engine.IO request: what the client asks for, before its session (if any) is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The transport the request uses.
    pub transport: Transport,
    /// The session, absent on a handshake.
    pub sid: Option<String>,
}

impl Request {
    /// Whether the request opens a new session.
    pub fn is_handshake(&self) -> bool {
        self.sid.is_none()
    }
}

/// Why a request that names a session is refused (the reference server's `Bad request` contexts).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BadRequest {
    /// `transport=websocket` on a plain HTTP request.
    #[error("transport=websocket needs a WebSocket upgrade request")]
    WebSocketWithoutUpgrade,
    /// A WebSocket upgrade request with `transport=polling`.
    #[error("a WebSocket upgrade request must say transport=websocket")]
    UpgradeWithPolling,
    /// A request with a sid that is neither GET nor POST.
    #[error("Engine.IO polling uses GET (receive) and POST (send) only")]
    Method,
    /// A POST body that could not be read (the client went away, or it took too long).
    #[error("the POST body could not be read: {0}; the session is closed")]
    Body(String),
    /// A query parameter given twice.
    #[error("query parameter {0} given more than once")]
    DuplicateParameter(&'static str),
    /// A polling request for a session that uses another transport (after an upgrade).
    #[error("the session uses the {current} transport, not {requested}")]
    TransportMismatch {
        /// The session's transport.
        current: &'static str,
        /// The request's.
        requested: &'static str,
    },
    /// A second GET while one is held: the session is closed.
    #[error("a second poll (GET) while one is pending; the session is closed")]
    PollOverlap,
    /// A second POST while one is read: the session is closed.
    #[error("a second POST while one is being read; the session is closed")]
    PostOverlap,
    /// A POST with `Content-Type: application/octet-stream`, which Engine.IO v4 does not use.
    #[error(
        "binary POST bodies are not Engine.IO v4 (binary packets are `b` + base64 text); the session is closed"
    )]
    BinaryBody,
    /// A WebSocket for a session that is already upgrading or upgraded.
    #[error("the session already has a WebSocket")]
    AlreadyUpgraded,
    /// A WebSocket for a session another server of the cluster holds: a WebSocket cannot be
    /// passed on to it (requests can), so the client goes on polling.
    #[error(
        "the session lives on another server, which its WebSocket cannot reach from here; the session goes on polling"
    )]
    OtherServer,
    /// A POST body that is no Engine.IO payload: the session is closed.
    #[error("invalid payload, the session is closed: {0}")]
    Packet(#[from] PacketError),
}

/// An Engine.IO request refused, with the reference server's code and message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// Code 0: a `transport` that is missing or not `polling`/`websocket`.
    #[error("unknown Engine.IO transport {0:?}: use transport=polling or transport=websocket")]
    UnknownTransport(String),
    /// Code 1: a `sid` that names no open session (never opened, closed, or timed out).
    #[error(
        "unknown Engine.IO session {0:?}: it was closed or never opened; open a new one without sid"
    )]
    UnknownSid(String),
    /// Code 2: a handshake that is not a GET.
    #[error("an Engine.IO handshake must be a GET request")]
    BadHandshakeMethod,
    /// Code 3: the request does not fit the session.
    #[error("bad Engine.IO request: {0}")]
    BadRequest(#[from] BadRequest),
    /// Code 4: refused by policy (origin, connection limits).
    #[error("Engine.IO request forbidden: {0}")]
    Forbidden(String),
    /// Code 5: `EIO` missing or not `4`.
    #[error(
        "unsupported Engine.IO protocol version {0:?}: this server speaks EIO=4 (Socket.IO v3 and later)"
    )]
    UnsupportedProtocolVersion(String),
    /// A POST body larger than `maxPayload` (HTTP 413, as the reference server answers).
    #[error("Engine.IO POST body larger than maxPayload ({0} bytes); the session is closed")]
    PayloadTooLarge(usize),
}

impl RequestError {
    /// The reference server's error code (`Server.errors`).
    pub fn code(&self) -> u8 {
        match self {
            Self::UnknownTransport(_) => 0,
            Self::UnknownSid(_) => 1,
            Self::BadHandshakeMethod => 2,
            Self::BadRequest(_) | Self::PayloadTooLarge(_) => 3,
            Self::Forbidden(_) => 4,
            Self::UnsupportedProtocolVersion(_) => 5,
        }
    }

    /// The reference server's message for the code (`Server.errorMessages`); `Forbidden` carries
    /// its own, as the reference's `allowRequest` does.
    pub fn message(&self) -> &str {
        match self {
            Self::UnknownTransport(_) => "Transport unknown",
            Self::UnknownSid(_) => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest(_) => "Bad request",
            Self::Forbidden(m) if !m.is_empty() => m,
            Self::Forbidden(_) => "Forbidden",
            Self::UnsupportedProtocolVersion(_) => "Unsupported protocol version",
            Self::PayloadTooLarge(_) => "Payload too large",
        }
    }

    /// The HTTP status: 403 for `Forbidden`, 413 for a body over `maxPayload`, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Self::Forbidden(_) => 403,
            Self::PayloadTooLarge(_) => 413,
            _ => 400,
        }
    }

    /// The JSON body of the answer (`Content-Type: application/json`).
    pub fn body(&self) -> String {
        serde_json::json!({ "code": self.code(), "message": self.message() }).to_string()
    }
}

/// Verifies an Engine.IO request as the reference server does, in its order: the transport, then
/// the session or, for a handshake, the method and the protocol version.
///
/// `query` is the raw query string (without `?`); `websocket_upgrade` says whether the request asks
/// for a WebSocket upgrade. The session a `sid` names is the caller's to look up.
pub fn verify(
    query: &str,
    method: Method,
    websocket_upgrade: bool,
) -> Result<Request, RequestError> {
    let params = Params::parse(query)?;
    let transport = match params.transport.as_deref() {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::WebSocket,
        other => {
            return Err(RequestError::UnknownTransport(
                other.unwrap_or_default().to_owned(),
            ));
        }
    };
    match params.eio.as_deref() {
        Some("4") => {}
        other => {
            return Err(RequestError::UnsupportedProtocolVersion(
                other.unwrap_or_default().to_owned(),
            ));
        }
    }
    match (transport, websocket_upgrade) {
        (Transport::WebSocket, false) => return Err(BadRequest::WebSocketWithoutUpgrade.into()),
        (Transport::Polling, true) => return Err(BadRequest::UpgradeWithPolling.into()),
        _ => {}
    }
    if params.sid.is_none() && method != Method::Get {
        return Err(RequestError::BadHandshakeMethod);
    }
    Ok(Request {
        transport,
        sid: params.sid,
    })
}

#[derive(Default)]
struct Params {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl Params {
    fn parse(query: &str) -> Result<Self, RequestError> {
        let mut params = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (slot, name) = match key {
                "EIO" => (&mut params.eio, "EIO"),
                "transport" => (&mut params.transport, "transport"),
                "sid" => (&mut params.sid, "sid"),
                _ => continue,
            };
            if slot.is_some() {
                return Err(BadRequest::DuplicateParameter(name).into());
            }
            *slot = Some(percent_decode(value));
        }
        // An empty sid is no sid (`?sid=` from a client that lost it): a handshake.
        if params.sid.as_deref() == Some("") {
            params.sid = None;
        }
        Ok(params)
    }
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte; a `%`
/// not followed by two hex digits stays as is (Node's `querystring` does the same).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes() {
        assert_eq!(
            verify("EIO=4&transport=polling", Method::Get, false),
            Ok(Request {
                transport: Transport::Polling,
                sid: None
            })
        );
        assert_eq!(
            verify("EIO=4&transport=websocket", Method::Get, true),
            Ok(Request {
                transport: Transport::WebSocket,
                sid: None
            })
        );
        // Cache busters and unknown parameters are ignored.
        assert_eq!(
            verify(
                "EIO=4&transport=polling&t=N8hyd6w&sid=abc",
                Method::Post,
                false
            ),
            Ok(Request {
                transport: Transport::Polling,
                sid: Some("abc".into())
            })
        );
    }

    #[test]
    fn suite_error_cases() {
        // "fails with an invalid 'EIO' query parameter"
        for q in [
            "transport=polling",
            "EIO=abc&transport=polling",
            "EIO=3&transport=polling",
        ] {
            let e = verify(q, Method::Get, false).unwrap_err();
            assert_eq!(
                (e.status(), e.code(), e.message()),
                (400, 5, "Unsupported protocol version"),
                "{q}"
            );
        }
        // "fails with an invalid 'transport' query parameter"
        for q in ["EIO=4", "EIO=4&transport=abc"] {
            let e = verify(q, Method::Get, false).unwrap_err();
            assert_eq!(
                (e.status(), e.code(), e.message()),
                (400, 0, "Transport unknown"),
                "{q}"
            );
            assert_eq!(e.body(), r#"{"code":0,"message":"Transport unknown"}"#);
        }
        // "fails with an invalid request method"
        for m in [Method::Post, Method::Other] {
            let e = verify("EIO=4&transport=polling", m, false).unwrap_err();
            assert_eq!(
                (e.status(), e.code(), e.message()),
                (400, 2, "Bad handshake method")
            );
        }
    }

    #[test]
    fn transport_and_upgrade_must_agree() {
        assert_eq!(
            verify("EIO=4&transport=websocket", Method::Get, false),
            Err(BadRequest::WebSocketWithoutUpgrade.into())
        );
        assert_eq!(
            verify("EIO=4&transport=polling", Method::Get, true),
            Err(BadRequest::UpgradeWithPolling.into())
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let e = verify(
            "EIO=4&transport=polling&transport=websocket",
            Method::Get,
            false,
        )
        .unwrap_err();
        assert_eq!(e, BadRequest::DuplicateParameter("transport").into());
        assert_eq!(e.code(), 3);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Bb+c"), "a+b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%FF"), "\u{fffd}");
        assert_eq!(
            verify("EIO=%34&transport=polling&sid=a%2Db", Method::Get, false),
            Ok(Request {
                transport: Transport::Polling,
                sid: Some("a-b".into())
            })
        );
    }

    #[test]
    fn statuses_and_bodies() {
        assert_eq!(RequestError::Forbidden(String::new()).status(), 403);
        assert_eq!(
            RequestError::Forbidden(String::new()).body(),
            r#"{"code":4,"message":"Forbidden"}"#
        );
        assert_eq!(
            RequestError::Forbidden("origin not allowed".into()).message(),
            "origin not allowed"
        );
        assert_eq!(RequestError::PayloadTooLarge(10).status(), 413);
        assert_eq!(
            RequestError::UnknownSid("x".into()).body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
        assert_eq!(
            RequestError::from(BadRequest::PollOverlap).body(),
            r#"{"code":3,"message":"Bad request"}"#
        );
    }
}
