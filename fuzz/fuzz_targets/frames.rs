//! Arbitrary bytes, cut into reads at fuzzer-chosen points, through `Incoming::decode`.
//!
//! Input layout: `[flags, n, len_1 .. len_n, body ..]`
//! - `flags` bit 0: permessage-deflate negotiated; bit 1: client_no_context_takeover;
//!   bits 2-4: client_max_window_bits = 8 + v; bit 5: tiny limits; bit 6: few fragments;
//!   bit 7: round-trip mode (below).
//! - `n % 16` read sizes of 0..=255 bytes each (zero-length reads included); whatever is left of the
//!   stream after them is the last read.
//!
//! Raw mode: `body` is the byte stream from the client. Checks: no panic; every message within
//! `max_message_size`; text messages (and close reasons) are UTF-8; ping/pong payloads within 125
//! bytes; the read buffer stays bounded; and the events and the final error are the same whether the
//! stream arrives in pieces or all at once, and whether or not whole messages are first decoded in
//! place (`Incoming::decode_in_place`, the fast path of `WebSocket::poll_each`).
//!
//! Round-trip mode: `body` is a list of messages `[mode, len, plaintext ..len]` that the target
//! compresses the way RFC 7692 §7.2.3 lets a client (sync or full flush with the tail removed, stored
//! blocks at level 0, optionally a BFINAL block, or no compression at all), with or without context
//! takeover, cuts into `1 + (mode >> 5)` fragments, masks and frames. Check: the decoder gives back
//! exactly the plaintexts, whatever the cuts. `mode` bits 0-1: 0 sync flush, 1 full flush, 2 BFINAL
//! , 3 uncompressed; bit 4: text (when the plaintext is UTF-8).
//! The zlib level comes from `flags` bits 5-6 (0, 1, 6, 9).
#![no_main]

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress, Status};
use libfuzzer_sys::fuzz_target;
use switchboard_websocket::frame::apply_mask;
use switchboard_websocket::{Config, DeflateParams, Event, Incoming, Message, ProtocolError};

struct Setup {
    config: Config,
    deflate: Option<DeflateParams>,
}

fn setup(flags: u8) -> Setup {
    let tiny = flags & 0x20 != 0;
    let config = Config {
        max_frame_size: if tiny { 300 } else { 64 << 10 },
        max_message_size: if tiny { 1000 } else { 64 << 10 },
        max_fragments: if flags & 0x40 != 0 { 4 } else { 256 },
        ..Config::default()
    };
    Setup {
        config,
        deflate: (flags & 1 != 0).then(|| params(flags)),
    }
}

fn params(flags: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: flags & 2 != 0,
        server_max_window_bits: 15,
        client_max_window_bits: 8 + ((flags >> 2) & 7),
    }
}

/// Decodes `reads` the way the connection does: append a read, then decode while frames come or the
/// buffer shrinks. Stops at the first error, as the connection would. With `in_place`, a read that
/// lands on an empty buffer first goes through `Incoming::decode_in_place`, as in
/// `WebSocket::poll_each`, and only what that leaves is appended.
fn run<'a>(
    s: &Setup,
    reads: impl Iterator<Item = &'a [u8]>,
    in_place: bool,
) -> (Vec<Event>, Option<ProtocolError>) {
    let mut inc = Incoming::new(&s.config, s.deflate.as_ref());
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut fed = 0usize;
    for read in reads {
        fed += read.len();
        let mut read = read.to_vec();
        let mut at = 0;
        while in_place && buf.is_empty() {
            let left = read.len() - at;
            match inc.decode_in_place(&mut read[at..]) {
                Ok(Some((used, msg))) => {
                    assert!(used > 0 && used <= left, "took {used} of {left} bytes");
                    at += used;
                    let event = Event::Message(msg.to_message());
                    check(s, &event);
                    events.push(event);
                }
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
        buf.extend_from_slice(&read[at..]);
        loop {
            let before = buf.len();
            match inc.decode(&mut buf) {
                Ok(Some(event)) => {
                    check(s, &event);
                    events.push(event);
                }
                Ok(None) if buf.len() != before => {}
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
            // `decode` grows the buffer to fit an announced frame; that must stay within the limits.
            let bound = 4 * (s.config.max_frame_size + 14 + fed) + 64;
            assert!(
                buf.capacity() <= bound,
                "read buffer capacity {} over {bound}",
                buf.capacity()
            );
        }
    }
    (events, None)
}

fn check(s: &Setup, event: &Event) {
    match event {
        Event::Message(m) => {
            let len = m.payload().len();
            assert!(
                len <= s.config.max_message_size,
                "message of {len} bytes over max_message_size {}",
                s.config.max_message_size
            );
            if let Message::Text(b) = m {
                assert!(std::str::from_utf8(b).is_ok(), "text message is not UTF-8");
            }
        }
        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125, "control payload {}", p.len()),
        Event::Close(c) => assert!(c.reason.len() <= 123, "close reason {}", c.reason.len()),
    }
}

/// Cuts `stream` into reads of the given sizes, the rest being the last read.
fn cut<'a>(sizes: &[u8], stream: &'a [u8]) -> Vec<&'a [u8]> {
    let mut reads = Vec::with_capacity(sizes.len() + 1);
    let mut tail = stream;
    for &size in sizes {
        let (read, more) = tail.split_at(usize::from(size).min(tail.len()));
        reads.push(read);
        tail = more;
    }
    reads.push(tail);
    reads
}

/// Compresses `input` with `flush` until zlib has nothing more to give.
fn deflate(c: &mut Compress, input: &[u8], flush: FlushCompress) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let start = c.total_in();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(256);
        }
        let consumed = (c.total_in() - start) as usize;
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .expect("zlib refused to compress");
        let consumed = (c.total_in() - start) as usize;
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            _ => consumed == input.len() && out.len() < out.capacity(),
        };
        if done {
            return out;
        }
    }
}

thread_local! {
    /// Compressors by (level, window bits), reset: allocating one per run would dominate the run.
    static COMPRESSORS: RefCell<Vec<(u32, u8, Compress)>> = const { RefCell::new(Vec::new()) };
}

fn take_compressor(level: u32, bits: u8) -> Compress {
    COMPRESSORS
        .with_borrow_mut(|pool| {
            let i = pool
                .iter()
                .position(|(l, b, _)| (*l, *b) == (level, bits))?;
            Some(pool.swap_remove(i).2)
        })
        .unwrap_or_else(|| Compress::new_with_window_bits(Compression::new(level), false, bits))
}

/// A masked client frame.
fn frame(out: &mut Vec<u8>, fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    out.push((u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode);
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
    out.extend_from_slice(&KEY);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], KEY);
}

fn roundtrip(flags: u8, sizes: &[u8], mut body: &[u8]) {
    let params = params(flags);
    let keep = !params.client_no_context_takeover;
    let s = Setup {
        config: Config {
            max_frame_size: 64 << 10,
            max_message_size: 64 << 10,
            max_fragments: 256,
            ..Config::default()
        },
        deflate: Some(params),
    };
    let level = [0, 1, 6, 9][usize::from((flags >> 5) & 3)];
    // zlib cannot compress with an 8-bit window; 9 bits is what a client limited to 8 really uses.
    let bits = params.client_max_window_bits.max(9);
    let mut c = take_compressor(level, bits);

    let mut stream = Vec::new();
    let mut expected = Vec::new();
    while let [mode, len, more @ ..] = body {
        let (plain, rest) = more.split_at(usize::from(*len).min(more.len()));
        body = rest;
        let text = mode & 0x10 != 0 && std::str::from_utf8(plain).is_ok();
        let (payload, rsv1) = match mode & 3 {
            3 => (plain.to_vec(), false),
            2 => {
                // §7.2.3.4: a BFINAL block, then one 0x00 so that the tail the receiver appends
                // reads as an empty stored block.
                let mut z = deflate(&mut c, plain, FlushCompress::Finish);
                z.push(0x00);
                c.reset();
                (z, true)
            }
            kind => {
                let flush = if kind == 1 {
                    FlushCompress::Full
                } else {
                    FlushCompress::Sync
                };
                let mut z = deflate(&mut c, plain, flush);
                if z.is_empty() {
                    // zlib makes nothing of an empty input right after a flush: §7.2.3.6's empty
                    // stored block stands for it.
                    z.push(0x00);
                } else {
                    assert!(z.ends_with(&[0, 0, 0xff, 0xff]), "no sync tail: {z:?}");
                    z.truncate(z.len() - 4);
                }
                if !keep {
                    c.reset();
                }
                (z, true)
            }
        };
        let fragments = 1 + usize::from(mode >> 5);
        let step = payload.len().div_ceil(fragments);
        for i in 0..fragments {
            let piece =
                &payload[(i * step).min(payload.len())..((i + 1) * step).min(payload.len())];
            let opcode = match (i, text) {
                (0, true) => 1,
                (0, false) => 2,
                _ => 0,
            };
            frame(
                &mut stream,
                i + 1 == fragments,
                rsv1 && i == 0,
                opcode,
                piece,
            );
        }
        let bytes = Bytes::copy_from_slice(plain);
        expected.push(Event::Message(if text {
            Message::Text(bytes)
        } else {
            Message::Binary(bytes)
        }));
    }

    c.reset();
    COMPRESSORS.with_borrow_mut(|pool| pool.push((level, bits, c)));

    let (events, err) = run(&s, cut(sizes, &stream).into_iter(), sizes.len() % 2 == 1);
    assert_eq!(
        err,
        None,
        "valid compressed stream refused after {} messages",
        events.len()
    );
    assert_eq!(
        events, expected,
        "inflated messages differ from what was sent"
    );
}

fuzz_target!(|data: &[u8]| {
    let [flags, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, body) = rest.split_at(n);
    if flags & 0x80 != 0 {
        return roundtrip(*flags, sizes, body);
    }
    let s = setup(*flags);
    let split = run(&s, cut(sizes, body).into_iter(), false);
    let whole = run(&s, std::iter::once(body), false);
    assert_eq!(split, whole, "result depends on how the stream was cut");
    let split_in_place = run(&s, cut(sizes, body).into_iter(), true);
    assert_eq!(split_in_place, whole, "decoding in place changed the result");
    let whole_in_place = run(&s, std::iter::once(body), true);
    assert_eq!(whole_in_place, whole, "decoding in place changed the result");
});
