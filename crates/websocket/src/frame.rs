//! Frame headers (RFC 6455 §5.2): the bytes in front of every payload.
//!
//! This is the only place where untrusted bytes are parsed bit by bit, so it is kept free of IO and state:
//! [`parse_header`] looks at a byte slice and either returns a complete header, asks for more bytes, or
//! names the rule the peer broke. The `fuzz/` target drives it directly.

use crate::error::ProtocolError;

/// A frame's opcode (RFC 6455 §5.2). Reserved opcodes never get this far: [`parse_header`] refuses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// A later fragment of a message.
    Continuation,
    /// The first (or only) frame of a text message.
    Text,
    /// The first (or only) frame of a binary message.
    Binary,
    /// Close control frame.
    Close,
    /// Ping control frame.
    Ping,
    /// Pong control frame.
    Pong,
}

impl OpCode {
    /// Decodes the low nibble of a frame's first byte.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The opcode's wire value.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) may arrive between the fragments of a message.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Longest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// RSV1: set on the first frame of a compressed message when permessage-deflate is in use.
    pub rsv1: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The client's masking key; `None` for frames sent by a server.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// Bytes the header itself takes.
    pub header_len: usize,
}

/// Parses a frame header from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold the whole header yet. Checks the rules that need no
/// connection state: RSV2/RSV3 clear, known opcode, control frames unfragmented and short, the 64-bit
/// length's top bit clear. RSV1 and masking depend on the connection and are checked by the caller.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x30 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(b);
                let n = u64::from_be_bytes(eight);
                if n >> 63 != 0 {
                    return Err(ProtocolError::InvalidLength);
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        if payload_len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(ProtocolError::ControlTooLong);
        }
    }
    let mask = if masked {
        let Some(m) = buf.get(len..len + 4) else {
            return Ok(None);
        };
        len += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        rsv1,
        opcode,
        mask,
        payload_len,
        header_len: len,
    }))
}

/// Writes an unmasked (server to client) frame header into `out` and returns its length.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    len: usize,
) -> usize {
    out[0] = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode.bits();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Unmasks (or masks: XOR is its own inverse) `data` in place with `key`.
///
/// Works eight bytes at a time; the compiler turns the loop into SIMD, which is why this is not a
/// byte loop. Payloads are always unmasked from their first byte, so no key rotation is needed.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let key8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ key8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Unmasks `data` in place like [`apply_mask`] and tells whether every unmasked byte is ASCII.
///
/// The ASCII test rides along the XOR (one OR per word, no second pass), so a small text message,
/// nearly always ASCII in practice, needs no UTF-8 validation call at all: on the echo benchmark's
/// 64-byte messages that call cost more than unmasking.
pub fn unmask_is_ascii(data: &mut [u8], key: [u8; 4]) -> bool {
    let key8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut high = 0u64;
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let plain = u64::from_ne_bytes(word) ^ key8;
        high |= plain;
        chunk.copy_from_slice(&plain.to_ne_bytes());
    }
    let mut tail = 0u8;
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
        tail |= *b;
    }
    (high | u64::from(tail)) & 0x8080_8080_8080_8080 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_masked_short_frame() {
        // RFC 6455 §5.7: a masked "Hello".
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let h = parse_header(&bytes).unwrap().unwrap();
        assert!(h.fin && !h.rsv1);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.header_len, 6);
        let mut payload = bytes[6..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap());
        assert_eq!(payload, b"Hello");
    }

    #[test]
    fn asks_for_more_bytes_at_every_cut() {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut out, true, false, OpCode::Binary, 70_000);
        let mut bytes = out[..n].to_vec();
        bytes[1] |= 0x80;
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        for cut in 0..bytes.len() {
            assert_eq!(parse_header(&bytes[..cut]).unwrap(), None, "cut at {cut}");
        }
        let h = parse_header(&bytes).unwrap().unwrap();
        assert_eq!((h.payload_len, h.header_len), (70_000, 14));
    }

    #[test]
    fn refuses_broken_headers() {
        assert_eq!(
            parse_header(&[0xA1, 0x80]),
            Err(ProtocolError::ReservedBits)
        );
        assert_eq!(
            parse_header(&[0x83, 0x80]),
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x09, 0x80]),
            Err(ProtocolError::FragmentedControl)
        );
        assert_eq!(
            parse_header(&[0x89, 0xFE, 0, 126]),
            Err(ProtocolError::ControlTooLong)
        );
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&huge), Err(ProtocolError::InvalidLength));
    }

    #[test]
    fn header_lengths_round_trip() {
        for len in [0usize, 125, 126, 65_535, 65_536, 1 << 24] {
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = encode_header(&mut out, true, true, OpCode::Text, len);
            let h = parse_header(&out[..n]).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64);
            assert!(h.rsv1 && h.mask.is_none());
        }
    }

    #[test]
    fn unmask_is_ascii_agrees_with_apply_mask_and_is_ascii() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            // The one non-ASCII byte moves through every position, word and tail alike.
            for high_at in std::iter::once(None).chain((0..len).map(Some)) {
                let plain: Vec<u8> = (0..len)
                    .map(|i| {
                        if Some(i) == high_at {
                            0xC3
                        } else {
                            b'a' + (i % 26) as u8
                        }
                    })
                    .collect();
                let mut masked = plain.clone();
                apply_mask(&mut masked, key);
                let mut data = masked.clone();
                let ascii = unmask_is_ascii(&mut data, key);
                assert_eq!(data, plain, "len {len}, high byte at {high_at:?}");
                assert_eq!(
                    ascii,
                    plain.is_ascii(),
                    "len {len}, high byte at {high_at:?}"
                );
            }
        }
    }

    #[test]
    fn mask_is_an_involution_for_every_length() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut data = original.clone();
            apply_mask(&mut data, [1, 2, 3, 4]);
            for (i, (a, b)) in data.iter().zip(&original).enumerate() {
                assert_eq!(*a, b ^ [1, 2, 3, 4][i % 4]);
            }
            apply_mask(&mut data, [1, 2, 3, 4]);
            assert_eq!(data, original);
        }
    }
}
