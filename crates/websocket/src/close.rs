//! Close codes and close frame payloads (RFC 6455 §5.5.1, §7.4).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// A close status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection is fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the server is going away (shutdown, restart) or the peer is gone.
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED: Self = Self(1003);
    /// 1005: no code was given (never sent on the wire).
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: closed without a close frame (never sent on the wire).
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: a text message that is not UTF-8.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: a policy was violated (e.g. a timeout).
    pub const POLICY: Self = Self(1008);
    /// 1009: a message too big to process.
    pub const TOO_BIG: Self = Self(1009);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL: Self = Self(1011);
    /// 1012: the server is restarting.
    pub const RESTART: Self = Self(1012);
    /// 1013: try again later.
    pub const TRY_AGAIN_LATER: Self = Self(1013);

    /// Whether a peer may send this code in a close frame.
    ///
    /// 1000–1003 and 1007–1014 are defined by RFC 6455 and the IANA registry, 3000–4999 belong to
    /// libraries and applications; everything else (including 1004–1006 and 1015) is refused.
    pub fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A decoded close frame payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The code, or `None` for an empty close frame.
    pub code: Option<CloseCode>,
    /// The UTF-8 reason (possibly empty).
    pub reason: String,
}

impl CloseFrame {
    /// Parses and validates a close frame's payload.
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        match payload {
            [] => Ok(Self {
                code: None,
                reason: String::new(),
            }),
            [_] => Err(ProtocolError::InvalidClosePayload),
            [hi, lo, reason @ ..] => {
                let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
                if !code.is_allowed_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason =
                    simdutf8::basic::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Self {
                    code: Some(code),
                    reason: reason.to_owned(),
                })
            }
        }
    }
}

/// Encodes a close payload; the reason is cut (at a character boundary) to fit in a control frame.
pub fn encode_close_payload(code: CloseCode, reason: &str) -> Bytes {
    let mut end = reason.len().min(crate::frame::MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = BytesMut::with_capacity(2 + end);
    out.put_u16(code.0);
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out.freeze()
}

// Here rather than beside `ProtocolError`: the error names no close code, the close code knows every
// error (one direction between the two files).
impl ProtocolError {
    /// The close code sent to the peer for this error (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            Self::FrameTooLarge { .. }
            | Self::MessageTooLarge { .. }
            | Self::TooManyFragments { .. } => CloseCode::TOO_BIG,
            Self::MessageTimeout => CloseCode::POLICY,
            _ => CloseCode::PROTOCOL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_codes() {
        for ok in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(CloseFrame::parse(&u16::to_be_bytes(ok)).is_ok(), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000] {
            assert_eq!(
                CloseFrame::parse(&u16::to_be_bytes(bad)),
                Err(ProtocolError::InvalidCloseCode(bad)),
                "{bad}"
            );
        }
        assert_eq!(
            CloseFrame::parse(&[3]),
            Err(ProtocolError::InvalidClosePayload)
        );
        assert_eq!(
            CloseFrame::parse(&[3, 232, 0xff]),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let reason = "é".repeat(100);
        let payload = encode_close_payload(CloseCode::NORMAL, &reason);
        assert!(payload.len() <= 125);
        assert_eq!(
            CloseFrame::parse(&payload).unwrap().reason.chars().count(),
            61
        );
    }
}
