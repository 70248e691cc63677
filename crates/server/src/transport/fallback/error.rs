//! What a fallback request answers when it fails: a status and
//! `{"error":{"code":<protocol error code>,"message":"..."}}`, and the JSON responses of the endpoints.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchboard_protocol::ErrorCode;

use crate::limits::Refusal;

/// Why a fallback request failed; each answers its status with
/// `{"error":{"code":<protocol error code>,"message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FallbackError {
    /// No session has this token (never opened, expired, over, or a wrong secret).
    #[error("unknown or expired session: open a new one (POST {0}) and recover")]
    UnknownSession(String),
    /// The body did not arrive within `body_read_timeout`.
    #[error("request body not received within {0:?} ([fallback] body_read_timeout)")]
    BodyTimeout(Duration),
    /// A connection limit refused the session (503 or 429, see `[limits]`).
    #[error("{}", .0.reason().trim_end())]
    Limited(Refusal),
    /// The body is over `max_body_bytes`.
    #[error("request body over {0} bytes ([fallback] max_body_bytes): send fewer commands at once")]
    TooLarge(usize),
    /// A parameter is missing or malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The commands broke the protocol: the session ended with disconnect 3501 (or never opened).
    #[error(
        "the commands broke the protocol (unparsable JSON, a bad id, or a command before connect): {0}"
    )]
    BadCommands(&'static str),
    /// An upstream POST skipped ahead.
    #[error(
        "upstream n={got} is out of order: the session expects n={expected} next (POST in order, one at a time)"
    )]
    OutOfOrder {
        /// The `n` sent.
        got: u64,
        /// The `n` the session takes next.
        expected: u64,
    },
    /// The request's `Origin` is not allowed.
    #[error("origin {0} is not allowed: add it to [fallback] allowed_origins")]
    Origin(String),
    /// Too many requests are relayed between nodes at once (503 with `Retry-After`).
    #[error(
        "too many requests relayed between nodes at once ([fallback] max_relayed_requests): retry shortly"
    )]
    Busy,
    /// The session's node cannot be reached for now: the engine is down (503 with `Retry-After`).
    #[error("the session's node cannot be reached for now: retry shortly")]
    Unavailable,
    /// The server failed.
    #[error("internal server error: {0}")]
    Internal(String),
}

impl FallbackError {
    /// The HTTP status it answers.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownSession(_) => StatusCode::NOT_FOUND,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Limited(r) => r.status(),
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) | Self::BadCommands(_) => StatusCode::BAD_REQUEST,
            Self::OutOfOrder { .. } => StatusCode::CONFLICT,
            Self::Origin(_) => StatusCode::FORBIDDEN,
            Self::Busy | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The protocol error code in its body.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownSession(_) => ErrorCode::Unauthorized,
            Self::TooLarge(_) => ErrorCode::LimitExceeded,
            Self::BadRequest(_)
            | Self::BadCommands(_)
            | Self::OutOfOrder { .. }
            | Self::BodyTimeout(_) => ErrorCode::BadRequest,
            Self::Limited(_) | Self::Busy => ErrorCode::TooManyRequests,
            Self::Origin(_) => ErrorCode::PermissionDenied,
            Self::Internal(_) | Self::Unavailable => ErrorCode::Internal,
        }
    }
}

impl IntoResponse for FallbackError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({"error": {"code": self.code().code(), "message": self.to_string()}});
        let mut resp = json(self.status(), Bytes::from(body.to_string()));
        let retry_after = match self {
            Self::Limited(r) => Some(r.retry_after()),
            Self::Busy | Self::Unavailable => Some("1"),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        resp
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
