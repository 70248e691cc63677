//! The data the protocol talks about: publications, their payloads and positions, and who a client is.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A position in a channel's stream: the offset of a publication and the epoch of the stream it was in.
///
/// Offsets grow by one per publication. The epoch changes whenever the stream is lost (expired, or the
/// engine restarted), so an old offset under a new epoch means nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamPosition {
    /// Offset of the latest publication (0 when none).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// A publication's payload: JSON delivered as is, or bytes delivered as base64 (`b64data`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Raw JSON text, already validated.
    Json(Bytes),
    /// Arbitrary bytes.
    Binary(Bytes),
}

impl Payload {
    /// Bytes the payload takes (for limits).
    pub fn len(&self) -> usize {
        match self {
            Self::Json(b) | Self::Binary(b) => b.len(),
        }
    }

    /// True for an empty binary payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Who a client is, as shown in presence and in join/leave pushes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The connection's id.
    pub client: String,
    /// The user's id (empty for anonymous connections).
    pub user: String,
    /// Application data about the connection (from the token's `info` claim), raw JSON.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<Box<serde_json::value::RawValue>>,
}

impl PartialEq for ClientInfo {
    fn eq(&self, other: &Self) -> bool {
        self.client == other.client
            && self.user == other.user
            && self.info.as_ref().map(|i| i.get()) == other.info.as_ref().map(|i| i.get())
    }
}

impl Eq for ClientInfo {}

/// One message in a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// Position in the channel's stream; 0 in channels without history.
    pub offset: u64,
    /// What was published.
    pub payload: Payload,
    /// The publishing client, when a client published it.
    pub info: Option<Arc<ClientInfo>>,
    /// Application tags, passed through.
    pub tags: Option<BTreeMap<String, String>>,
}

impl Publication {
    /// A publication of `payload`, before the engine gives it an offset.
    pub fn new(payload: Payload) -> Self {
        Self {
            offset: 0,
            payload,
            info: None,
            tags: None,
        }
    }
}

/// `raw` JSON on one line: raw line breaks, which JSON allows only as whitespace between tokens (never
/// inside strings), become spaces. Frames carry newline-separated messages, so JSON from outside
/// (the server API, the application's handlers, token claims) must not split one message in two.
/// Borrows when there is nothing to change, which is nearly always.
pub fn single_line(raw: &str) -> std::borrow::Cow<'_, str> {
    if raw.contains(['\n', '\r']) {
        std::borrow::Cow::Owned(raw.replace(['\n', '\r'], " "))
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// [`single_line`] for an owned raw value.
pub fn single_line_raw(raw: Box<serde_json::value::RawValue>) -> Box<serde_json::value::RawValue> {
    match single_line(raw.get()) {
        std::borrow::Cow::Borrowed(_) => raw,
        // Spaces for line breaks outside strings keep the text valid JSON.
        std::borrow::Cow::Owned(text) => {
            serde_json::value::RawValue::from_string(text).unwrap_or(raw)
        }
    }
}

#[cfg(test)]
mod single_line_tests {
    use super::*;

    #[test]
    fn line_breaks_between_tokens_become_spaces() {
        assert_eq!(
            single_line("{\n  \"a\": [1,\r\n 2]\n}"),
            "{   \"a\": [1,   2] }"
        );
        assert!(matches!(
            single_line(r#"{"a":"b\nc"}"#),
            std::borrow::Cow::Borrowed(_)
        ));
        let raw = serde_json::value::RawValue::from_string("{\n\"x\": 1}".into()).unwrap();
        let v: serde_json::Value = serde_json::from_str(single_line_raw(raw).get()).unwrap();
        assert_eq!(v, serde_json::json!({"x": 1}));
    }
}
