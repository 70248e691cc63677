//! The incoming side of a connection without IO: bytes in, frames out, frames assembled into messages.
//!
//! [`Incoming::decode`] is what the `fuzz/` target drives: any byte sequence must produce frames,
//! messages or a [`ProtocolError`], never a panic, and never more memory than the limits allow.

use bytes::{Buf, Bytes, BytesMut};

use crate::close::CloseFrame;
use crate::config::Config;
use crate::deflate::{DeflateParams, Inflater};
use crate::error::ProtocolError;
use crate::frame::{OpCode, apply_mask, parse_header, unmask_is_ascii};
use crate::message::{Message, MessageRef};
use crate::utf8::Utf8Validator;

/// Payloads smaller than this are copied out of the read buffer (and unmasked in the same pass)
/// instead of being split off it: a small message kept by the application (history, a queue) then
/// does not pin a whole read buffer, and the read buffer is never shared, so taking a frame costs
/// no atomic reference-count update. Splitting made the buffer shared and cost two atomic updates
/// per message (one to split, one to drop the split part), more than the copy of a small payload:
/// profiling the echo benchmark (64-byte messages) put them at about 6 % of the server's CPU.
const COPY_OUT_BELOW: usize = 4096;

/// What one complete frame meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete data message.
    Message(Message),
    /// A ping; its payload is to be echoed in a pong.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame (already validated).
    Close(CloseFrame),
}

/// Frame decoding and message assembly for one server-side connection.
#[derive(Debug)]
pub struct Incoming {
    max_frame: usize,
    max_message: usize,
    max_fragments: usize,
    /// Boxed: only connections that agreed on permessage-deflate have one, and its stream state
    /// would otherwise take most of every idle connection's room.
    inflater: Option<Box<Inflater>>,
    /// Boxed: only fragmented (or compressed) messages have one, and every idle connection would
    /// carry its room.
    partial: Option<Box<Partial>>,
    /// How far the text frame at the front of the buffer, still incomplete, has been validated.
    peek: Option<Peek>,
}

/// UTF-8 validation of an incomplete text frame's payload, as far as it has arrived, so that invalid
/// text fails at the read that brings its first invalid byte rather than when the frame is whole
/// (RFC 6455 §8.1 "fail fast"; Autobahn 6.4.3 and 6.4.4 send such a frame in pieces).
#[derive(Debug)]
struct Peek {
    /// Payload bytes already validated.
    checked: usize,
    /// The message's validator after those bytes.
    utf8: Utf8Validator,
}

#[derive(Debug)]
struct Partial {
    text: bool,
    compressed: bool,
    fragments: usize,
    buf: Vec<u8>,
    utf8: Utf8Validator,
}

impl Incoming {
    /// Decoding state for a connection with `config`'s limits and the negotiated deflate parameters.
    pub fn new(config: &Config, deflate: Option<&DeflateParams>) -> Self {
        Self {
            max_frame: config.max_frame_size,
            max_message: config.max_message_size,
            max_fragments: config.max_fragments,
            inflater: deflate.map(|p| Box::new(Inflater::new(p))),
            partial: None,
            peek: None,
        }
    }

    /// True while a fragmented message is incomplete.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Takes one frame off the front of `buf` and returns what it completed, if anything.
    ///
    /// `Ok(None)` means `buf` holds no complete frame, or the frame was a fragment of a message still
    /// open; call again while `buf` shrinks. When a frame is incomplete, `buf` is grown to fit it so
    /// the next read can take it whole.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtocolError> {
        let Some(h) = parse_header(buf)? else {
            return Ok(None);
        };
        let mask = h.mask.ok_or(ProtocolError::UnmaskedFrame)?;
        if h.payload_len > self.max_frame as u64 {
            return Err(ProtocolError::FrameTooLarge {
                len: h.payload_len,
                max: self.max_frame,
            });
        }
        let len = h.payload_len as usize;
        if !h.opcode.is_control() {
            self.check_frame(h.opcode, h.rsv1, len)?;
        } else if h.rsv1 {
            return Err(ProtocolError::ReservedBits);
        }
        let total = h.header_len + len;
        if buf.len() < total {
            self.peek_text(h.opcode, h.rsv1, mask, &buf[h.header_len..])?;
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let peeked = self.peek.take();
        let (payload, ascii) = if len < COPY_OUT_BELOW {
            let mut small = buf[h.header_len..total].to_vec();
            let ascii = unmask_is_ascii(&mut small, mask);
            // Only moves the buffer's start: no reference count is touched.
            buf.advance(total);
            // Exactly as long as its capacity, so this takes the allocation over as it is.
            (Bytes::from(small), ascii)
        } else {
            buf.advance(h.header_len);
            let mut large = buf.split_to(len);
            apply_mask(&mut large, mask);
            (large.freeze(), false)
        };
        match h.opcode {
            OpCode::Ping => Ok(Some(Event::Ping(payload))),
            OpCode::Pong => Ok(Some(Event::Pong(payload))),
            OpCode::Close => Ok(Some(Event::Close(CloseFrame::parse(&payload)?))),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => self
                .data_frame(h.opcode, h.fin, h.rsv1, payload, ascii, peeked)
                .map(|m| m.map(Event::Message)),
        }
    }

    /// Decodes the frame at the front of `buf` in place when it is a whole message in one frame
    /// (final, uncompressed, text or binary) and no message is open: unmasks it where it lies and
    /// returns how many bytes it took and the message, borrowed from `buf`.
    ///
    /// `Ok(None)` for anything else (an incomplete frame, a control frame, a fragment, a compressed
    /// message, a frame over the limits); `buf` is then unchanged and [`Incoming::decode`] must take
    /// it from there, and reports the same errors. This is the connection's fast path for a read that
    /// holds whole small messages: no copy out of the read and no allocation (the `fuzz/` target
    /// checks that both paths give the same messages and errors).
    pub fn decode_in_place<'a>(
        &mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(usize, MessageRef<'a>)>, ProtocolError> {
        if self.partial.is_some() || self.peek.is_some() {
            return Ok(None);
        }
        let Some(h) = parse_header(buf)? else {
            return Ok(None);
        };
        let text = match h.opcode {
            OpCode::Text => true,
            OpCode::Binary => false,
            _ => return Ok(None),
        };
        let Some(mask) = h.mask.filter(|_| h.fin && !h.rsv1) else {
            return Ok(None);
        };
        if h.payload_len > self.max_frame.min(self.max_message) as u64 {
            return Ok(None);
        }
        let total = h.header_len + h.payload_len as usize;
        let Some(payload) = buf.get_mut(h.header_len..total) else {
            return Ok(None);
        };
        let ascii = unmask_is_ascii(payload, mask);
        if !text {
            return Ok(Some((total, MessageRef::Binary(payload))));
        }
        if !ascii {
            simdutf8::basic::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(Some((total, MessageRef::Text(payload))))
    }

    /// Validates the newly arrived part of an incomplete frame's payload (`received`, still masked)
    /// when the frame carries uncompressed text: a text frame starting a message, or a continuation
    /// of a text message. Compressed text is validated as it is inflated, once the frame is whole.
    fn peek_text(
        &mut self,
        opcode: OpCode,
        rsv1: bool,
        mask: [u8; 4],
        received: &[u8],
    ) -> Result<(), ProtocolError> {
        if self.peek.is_none() {
            let utf8 = match (&self.partial, opcode) {
                (None, OpCode::Text) if !rsv1 => Utf8Validator::default(),
                (Some(p), OpCode::Continuation) if p.text && !p.compressed => p.utf8.clone(),
                _ => return Ok(()),
            };
            self.peek = Some(Peek { checked: 0, utf8 });
        }
        let Some(peek) = self.peek.as_mut() else {
            return Ok(());
        };
        // Unmasked a piece at a time on the stack: the read buffer keeps the frame as it came.
        let mut scratch = [0u8; 1024];
        while peek.checked < received.len() {
            let n = (received.len() - peek.checked).min(scratch.len());
            let piece = &mut scratch[..n];
            piece.copy_from_slice(&received[peek.checked..peek.checked + n]);
            let o = peek.checked;
            apply_mask(
                piece,
                [
                    mask[o & 3],
                    mask[(o + 1) & 3],
                    mask[(o + 2) & 3],
                    mask[(o + 3) & 3],
                ],
            );
            peek.checked += n;
            peek.utf8.feed(piece)?;
        }
        Ok(())
    }

    /// Checks a data frame's header against the message state before its payload is even read, so an
    /// oversized or misplaced frame fails at once.
    fn check_frame(&self, opcode: OpCode, rsv1: bool, len: usize) -> Result<(), ProtocolError> {
        match (&self.partial, opcode) {
            (Some(_), OpCode::Text | OpCode::Binary) => Err(ProtocolError::ExpectedContinuation),
            (None, OpCode::Continuation) => Err(ProtocolError::UnexpectedContinuation),
            (Some(_), _) if rsv1 => Err(ProtocolError::ReservedBits),
            (None, _) if rsv1 && self.inflater.is_none() => Err(ProtocolError::ReservedBits),
            (Some(p), _) if p.fragments >= self.max_fragments => {
                Err(ProtocolError::TooManyFragments {
                    max: self.max_fragments,
                })
            }
            (Some(p), _) if !p.compressed && p.buf.len() + len > self.max_message => {
                Err(ProtocolError::MessageTooLarge {
                    max: self.max_message,
                })
            }
            (None, _) if !rsv1 && len > self.max_message => Err(ProtocolError::MessageTooLarge {
                max: self.max_message,
            }),
            _ => Ok(()),
        }
    }

    /// `payload` is unmasked; `ascii` says it was found to be all ASCII while unmasking (false when
    /// that was not checked), which makes it valid UTF-8 without further checking.
    fn data_frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        rsv1: bool,
        payload: Bytes,
        ascii: bool,
        peeked: Option<Peek>,
    ) -> Result<Option<Message>, ProtocolError> {
        if self.partial.is_none() {
            let text = opcode == OpCode::Text;
            if fin && !rsv1 {
                // The common case: a whole uncompressed message in one frame.
                if text {
                    match peeked {
                        // It came in pieces, validated as they came: only the rest is left.
                        Some(mut peek) => {
                            peek.utf8.feed(&payload[peek.checked..])?;
                            peek.utf8.finish()?;
                        }
                        None if ascii => {}
                        None => {
                            simdutf8::basic::from_utf8(&payload)
                                .map_err(|_| ProtocolError::InvalidUtf8)?;
                        }
                    }
                }
                return Ok(Some(if text {
                    Message::Text(payload)
                } else {
                    Message::Binary(payload)
                }));
            }
            self.partial = Some(Box::new(Partial {
                text,
                compressed: rsv1,
                fragments: 0,
                buf: Vec::new(),
                utf8: Utf8Validator::default(),
            }));
        }
        let Some(p) = self.partial.as_mut() else {
            return Ok(None);
        };
        p.fragments += 1;
        let mut before = p.buf.len();
        match (&mut self.inflater, p.compressed) {
            (Some(inflater), true) => {
                inflater.inflate(&payload, fin, &mut p.buf, self.max_message)?
            }
            _ => {
                if let Some(peek) = peeked {
                    // Validated as it came (only uncompressed text is peeked): skip those bytes.
                    p.utf8 = peek.utf8;
                    before += peek.checked;
                }
                p.buf.extend_from_slice(&payload);
            }
        }
        if p.text {
            p.utf8.feed(&p.buf[before..])?;
        }
        if !fin {
            return Ok(None);
        }
        let Some(p) = self.partial.take() else {
            return Ok(None);
        };
        let mut p = *p;
        if p.text {
            p.utf8.finish()?;
        }
        if p.buf.capacity() > p.buf.len() + p.buf.len() / 4 {
            p.buf.shrink_to_fit();
        }
        let bytes = Bytes::from(p.buf);
        Ok(Some(if p.text {
            Message::Text(bytes)
        } else {
            Message::Binary(bytes)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::CloseCode;
    use crate::deflate::compress_standalone;

    fn frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
        let key = [0x11, 0x22, 0x33, 0x44];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        let mut p = payload.to_vec();
        apply_mask(&mut p, key);
        out.extend_from_slice(&p);
        out
    }

    fn decode_all(inc: &mut Incoming, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
        match decode_slow(inc, bytes) {
            (_, Some(e)) => Err(e),
            (events, None) => Ok(events),
        }
    }

    fn plain() -> Incoming {
        Incoming::new(&Config::default(), None)
    }

    #[test]
    fn assembles_fragments_with_control_frames_between() {
        let mut bytes = frame(false, false, 1, "κό".as_bytes());
        bytes.extend(frame(true, false, 9, b"ping"));
        bytes.extend(frame(false, false, 0, "σμ".as_bytes()));
        bytes.extend(frame(true, false, 0, "ε".as_bytes()));
        let events = decode_all(&mut plain(), &bytes).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Ping(Bytes::from_static(b"ping")),
                Event::Message(Message::text("κόσμε"))
            ]
        );
    }

    #[test]
    fn each_rule_has_its_error() {
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (vec![0x81, 0x00], ProtocolError::UnmaskedFrame),
            (
                frame(true, false, 0, b"x"),
                ProtocolError::UnexpectedContinuation,
            ),
            (
                [frame(false, false, 1, b"a"), frame(true, false, 1, b"b")].concat(),
                ProtocolError::ExpectedContinuation,
            ),
            (frame(true, true, 1, b"x"), ProtocolError::ReservedBits),
            (frame(true, false, 1, b"\xff"), ProtocolError::InvalidUtf8),
            (
                frame(false, false, 1, b"ok\xf4\x90"),
                ProtocolError::InvalidUtf8,
            ),
            (
                frame(true, false, 8, &[0x03, 0xed]),
                ProtocolError::InvalidCloseCode(1005),
            ),
            (
                frame(true, false, 2, &vec![0; (1 << 20) + 1]),
                ProtocolError::FrameTooLarge {
                    len: (1 << 20) + 1,
                    max: 1 << 20,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                decode_all(&mut plain(), &bytes),
                Err(want.clone()),
                "{want}"
            );
        }
    }

    /// Feeds `bytes` as two reads cut at `cut`, as a connection would: the first read's bytes stay in
    /// the buffer while the frame is incomplete.
    fn decode_in_two(
        inc: &mut Incoming,
        bytes: &[u8],
        cut: usize,
    ) -> Result<Vec<Event>, ProtocolError> {
        let mut buf = BytesMut::from(&bytes[..cut]);
        let mut events = Vec::new();
        for more in [&bytes[cut..], &[][..]] {
            loop {
                let before = buf.len();
                match inc.decode(&mut buf)? {
                    Some(e) => events.push(e),
                    None if buf.len() == before => break,
                    None => {}
                }
            }
            buf.extend_from_slice(more);
        }
        Ok(events)
    }

    #[test]
    fn invalid_text_fails_before_its_frame_is_complete() {
        // Autobahn 6.4.3: one text frame in pieces, the second piece holding 0xF4 0x90 (never valid).
        let bad = frame(
            true,
            false,
            1,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited",
        );
        let at = bad.len() - b"\x80\x80edited".len();
        let mut inc = plain();
        let mut buf = BytesMut::from(&bad[..at - 2]);
        assert_eq!(inc.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&bad[at - 2..at]);
        assert_eq!(inc.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
        // Autobahn 6.4.4: the same with the invalid character split across pieces.
        let mut inc = plain();
        let mut buf = BytesMut::from(&bad[..at - 1]);
        assert_eq!(inc.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&bad[at - 1..at]);
        assert_eq!(inc.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
        // A continuation of a text message, arriving in pieces.
        let mut bytes = frame(false, false, 1, "κό".as_bytes());
        let first = bytes.len();
        bytes.extend(frame(
            true,
            false,
            0,
            b"ok\xf4\x90 and more that has not arrived",
        ));
        let mut inc = plain();
        let mut buf = BytesMut::from(&bytes[..first + 6 + 4]);
        assert_eq!(inc.decode(&mut buf), Ok(None));
        assert_eq!(inc.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn text_in_pieces_is_whole_at_every_cut() {
        let long = "κόσμε 𝄞 ".repeat(300);
        for msg in [
            frame(true, false, 1, "κόσμε".as_bytes()),
            frame(true, false, 1, long.as_bytes()),
        ] {
            for cut in 0..msg.len() {
                let events = decode_in_two(&mut plain(), &msg, cut).unwrap();
                assert_eq!(events.len(), 1, "cut at {cut}");
            }
        }
        let text = "κόσμε 𝄞 ".repeat(200);
        let (a, b) = text.as_bytes().split_at(701);
        let bytes = [frame(false, false, 1, a), frame(true, false, 0, b)].concat();
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_in_two(&mut plain(), &bytes, cut).unwrap(),
                vec![Event::Message(Message::text(&text))],
                "cut at {cut}"
            );
        }
        let bad = [
            frame(false, false, 1, a),
            frame(true, false, 0, b"\xed\xa0\x80"),
        ]
        .concat();
        for cut in 0..bad.len() {
            assert_eq!(
                decode_in_two(&mut plain(), &bad, cut),
                Err(ProtocolError::InvalidUtf8),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn small_payloads_are_copied_out_and_large_ones_shared() {
        // Several small frames in one read, as pipelining clients send them, then a large one.
        let large = "λ".repeat(COPY_OUT_BELOW);
        let mut bytes = frame(true, false, 1, b"ascii only");
        bytes.extend(frame(true, false, 1, "κόσμε".as_bytes()));
        bytes.extend(frame(true, false, 2, &[0xff, 0x80, 0]));
        bytes.extend(frame(true, false, 9, b"ping"));
        bytes.extend(frame(true, false, 1, large.as_bytes()));
        let mut buf = BytesMut::from(&bytes[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let mut inc = plain();
        let mut payloads = Vec::new();
        while let Some(event) = inc.decode(&mut buf).unwrap() {
            payloads.push(match event {
                Event::Message(m) => m.payload().clone(),
                Event::Ping(p) => p,
                other => panic!("unexpected {other:?}"),
            });
        }
        assert!(buf.is_empty());
        let want: [&[u8]; 5] = [
            b"ascii only",
            "κόσμε".as_bytes(),
            &[0xff, 0x80, 0],
            b"ping",
            large.as_bytes(),
        ];
        assert_eq!(payloads, want);
        for p in &payloads[..4] {
            assert!(
                !range.contains(&(p.as_ptr() as usize)),
                "a small payload points into the read buffer"
            );
        }
        assert!(range.contains(&(payloads[4].as_ptr() as usize)));
    }

    #[test]
    fn utf8_is_checked_whatever_the_size_and_cut() {
        // Invalid UTF-8 at the end of a whole frame, small (copied out, ASCII test while unmasking)
        // and large (shared, validated apart), with the bad byte in a word or in the tail.
        for len in [1, 7, 8, 9, 63, 64, 65, COPY_OUT_BELOW - 1, COPY_OUT_BELOW] {
            let mut text = vec![b'a'; len];
            let bad = [&text[..], &b"\xc3"[..]].concat();
            assert_eq!(
                decode_all(&mut plain(), &frame(true, false, 1, &bad)),
                Err(ProtocolError::InvalidUtf8),
                "{len} bytes then a cut character"
            );
            text.extend_from_slice("é".as_bytes());
            assert_eq!(
                decode_all(&mut plain(), &frame(true, false, 1, &text)).unwrap(),
                vec![Event::Message(Message::Text(Bytes::from(text.clone())))],
            );
        }
        // A character split across two fragments, each fragment alone not valid UTF-8: accepted;
        // and an invalid continuation byte in the second fragment: refused.
        let e = "é".as_bytes();
        let good = [
            frame(false, false, 1, &[&b"abc"[..], &e[..1]].concat()),
            frame(true, false, 0, &[&e[1..], &b"def"[..]].concat()),
        ]
        .concat();
        let bad = [
            frame(false, false, 1, &[&b"abc"[..], &e[..1]].concat()),
            frame(true, false, 0, b"def"),
        ]
        .concat();
        for cut in 0..good.len() {
            assert_eq!(
                decode_in_two(&mut plain(), &good, cut).unwrap(),
                vec![Event::Message(Message::text("abcédef"))],
                "cut at {cut}"
            );
            assert_eq!(
                decode_in_two(&mut plain(), &bad, cut),
                Err(ProtocolError::InvalidUtf8),
                "cut at {cut}"
            );
        }
        // A fragmented message ending in the middle of a character.
        let unfinished = [
            frame(false, false, 1, b"abc"),
            frame(true, false, 0, &e[..1]),
        ]
        .concat();
        assert_eq!(
            decode_all(&mut plain(), &unfinished),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn oversize_fails_from_the_header_alone() {
        let mut inc = plain();
        let mut buf = BytesMut::from(&frame(false, false, 2, &vec![0; 700_000])[..8]);
        assert_eq!(inc.decode(&mut buf), Ok(None));
        let mut next = BytesMut::from(&frame(false, false, 2, &vec![0; 700_000])[..]);
        assert_eq!(inc.decode(&mut next), Ok(None));
        let mut second = BytesMut::from(&frame(true, false, 0, &vec![0; 400_000])[..14]);
        assert_eq!(
            inc.decode(&mut second),
            Err(ProtocolError::MessageTooLarge { max: 1 << 20 })
        );
    }

    #[test]
    fn too_many_fragments() {
        let cfg = Config {
            max_fragments: 3,
            ..Config::default()
        };
        let mut bytes = frame(false, false, 2, b"a");
        for _ in 0..3 {
            bytes.extend(frame(false, false, 0, b"b"));
        }
        assert_eq!(
            decode_all(&mut Incoming::new(&cfg, None), &bytes),
            Err(ProtocolError::TooManyFragments { max: 3 })
        );
    }

    #[test]
    fn compressed_fragments_inflate() {
        let params = DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        };
        let text = "fragmented and compressed ".repeat(50);
        let z = compress_standalone(text.as_bytes(), 6, 15).unwrap();
        let (a, b) = z.split_at(z.len() / 2);
        let bytes = [
            frame(false, true, 1, a),
            frame(true, false, 0, b),
            frame(true, false, 8, &1000u16.to_be_bytes()),
        ]
        .concat();
        let mut inc = Incoming::new(&Config::default(), Some(&params));
        let events = decode_all(&mut inc, &bytes).unwrap();
        assert_eq!(events[0], Event::Message(Message::text(text)));
        assert_eq!(
            events[1],
            Event::Close(CloseFrame {
                code: Some(CloseCode::NORMAL),
                reason: String::new()
            })
        );
        // A compressed control frame is refused even when deflate is on.
        assert_eq!(
            decode_all(&mut inc, &frame(true, true, 9, b"")),
            Err(ProtocolError::ReservedBits)
        );
    }

    /// Events and the first error, decoded the way the connection decodes a read that lands on an
    /// empty buffer: whole simple frames in place first, then the rest through `decode`.
    fn decode_fast_then_slow(
        inc: &mut Incoming,
        bytes: &[u8],
    ) -> (Vec<Event>, Option<ProtocolError>) {
        let mut bytes = bytes.to_vec();
        let mut at = 0;
        let mut events = Vec::new();
        loop {
            match inc.decode_in_place(&mut bytes[at..]) {
                Ok(Some((used, msg))) => {
                    assert!(used > 0, "a message takes bytes");
                    at += used;
                    events.push(Event::Message(msg.to_message()));
                }
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
        let (rest, err) = decode_slow(inc, &bytes[at..]);
        events.extend(rest);
        (events, err)
    }

    fn decode_slow(inc: &mut Incoming, bytes: &[u8]) -> (Vec<Event>, Option<ProtocolError>) {
        let mut buf = BytesMut::from(bytes);
        let mut events = Vec::new();
        loop {
            let before = buf.len();
            match inc.decode(&mut buf) {
                Ok(Some(e)) => events.push(e),
                Ok(None) if buf.len() == before => return (events, None),
                Ok(None) => {}
                Err(e) => return (events, Some(e)),
            }
        }
    }

    /// The fast path is an optimisation only: for any stream of frames (valid or not, cut anywhere,
    /// over or under the limits) it gives the same messages and the same error as `decode` alone.
    #[test]
    fn decoding_in_place_agrees_with_decode() {
        let limits = Config {
            max_frame_size: 200,
            max_message_size: 250,
            ..Config::default()
        };
        let payloads: [&[u8]; 7] = [
            b"",
            b"hello",
            "κόσμε".as_bytes(),
            b"\xff\xfe",
            b"ok\xf4\x90",
            &[b'a'; 130],
            &[0xce; 220],
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut fast_messages = 0;
        for _ in 0..20_000 {
            let mut stream = Vec::new();
            for _ in 0..1 + next(5) {
                let opcode = [1, 1, 2, 2, 0, 9, 10, 8, 3][next(9) as usize];
                let payload = payloads[next(payloads.len() as u64) as usize];
                let payload = if opcode == 8 {
                    &[0x03, 0xe8][..]
                } else {
                    payload
                };
                let mut f = frame(next(4) != 0, next(8) == 0, opcode, payload);
                if next(30) == 0 {
                    f[1] &= 0x7f; // unmasked: a client must mask
                    f.drain(2..6);
                }
                stream.extend(f);
            }
            stream.truncate(stream.len() - next(stream.len() as u64 / 2 + 1) as usize);
            let slow = decode_slow(&mut Incoming::new(&limits, None), &stream);
            let fast = decode_fast_then_slow(&mut Incoming::new(&limits, None), &stream);
            assert_eq!(fast, slow, "stream {stream:02x?}");
            fast_messages += fast.0.len();
        }
        assert!(fast_messages > 1000, "the cases reach messages");
    }

    #[test]
    fn a_whole_message_decodes_in_place_and_anything_else_is_left() {
        let mut inc = plain();
        let mut bytes = [frame(true, false, 1, b"hi"), frame(true, false, 9, b"")].concat();
        let (used, msg) = inc.decode_in_place(&mut bytes).unwrap().unwrap();
        assert_eq!((used, msg), (8, MessageRef::Text(b"hi")));
        let rest = bytes[used..].to_vec();
        assert_eq!(inc.decode_in_place(&mut bytes[used..]), Ok(None));
        assert_eq!(bytes[used..], rest[..], "left as it was for decode");
    }
}
