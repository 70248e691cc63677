//! permessage-deflate (RFC 7692): negotiation, and the compressors behind it.
//!
//! Memory is the cost that makes servers turn compression off (a zlib compressor with a 32 KiB window
//! weighs about 256 KiB), so this module is built around *not* keeping one per connection:
//!
//! - by default the server answers every offer with `server_no_context_takeover`, which RFC 7692 §7.1.1.1
//!   lets it do unasked. Each message is then compressed on its own, with a compressor borrowed from a
//!   small per-thread pool, and a message broadcast to many clients is compressed once and the bytes
//!   shared (see [`crate::SharedMessage`]);
//! - by default the server also asks clients for `client_no_context_takeover` (§7.1.1.2), so an
//!   inflater is only borrowed while a compressed message is being received;
//! - context takeover in either direction stays available by configuration, for links where ratio
//!   matters more than memory; the state is then created on first use and lives with the connection.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::ProtocolError;

/// The bytes a sync flush ends with, removed by the sender and put back by the receiver (§7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Server-side permessage-deflate settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct DeflateConfig {
    /// Accept permessage-deflate offers at all.
    pub enabled: bool,
    /// Messages shorter than this many bytes are sent uncompressed: deflate does not pay below it.
    pub threshold: usize,
    /// zlib level, 0 (store) to 9 (smallest); 1 is fastest and what most real-time traffic wants.
    pub level: u32,
    /// Largest LZ77 window (as a power of two, 9..=15) the server compresses with.
    pub server_max_window_bits: u8,
    /// Largest window (9..=15) asked of clients that say they can limit theirs.
    pub client_max_window_bits: u8,
    /// Compress every message on its own (no state kept between messages). Makes compress-once
    /// broadcast possible and costs no memory per idle connection.
    pub server_no_context_takeover: bool,
    /// Ask clients to compress every message on its own, so the server keeps no inflater per connection.
    pub client_no_context_takeover: bool,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 256,
            level: 1,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            server_no_context_takeover: true,
            client_no_context_takeover: true,
        }
    }
}

/// What was agreed with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message.
    pub client_no_context_takeover: bool,
    /// Window the server compresses with.
    pub server_max_window_bits: u8,
    /// Largest window the client may compress with.
    pub client_max_window_bits: u8,
}

/// Picks the first acceptable permessage-deflate offer from `Sec-WebSocket-Extensions` header values
/// and returns the agreed parameters with the response header value.
///
/// Offers with unknown or repeated parameters, or values out of range, are declined (§5), as are
/// offers that insist on an 8-bit server window: zlib cannot produce raw deflate with a 256-byte window.
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    config: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    if !config.enabled {
        return None;
    }
    header_values
        .into_iter()
        .flat_map(|v| split_outside_quotes(v, ','))
        .find_map(|offer| accept_offer(offer, config))
}

fn accept_offer(offer: &str, config: &DeflateConfig) -> Option<(DeflateParams, String)> {
    let mut parts = split_outside_quotes(offer, ';');
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return None;
    }
    let (mut snct, mut cnct) = (false, false);
    let (mut smwb, mut cmwb): (Option<u8>, Option<Option<u8>>) = (None, None);
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) if !snct => snct = true,
            ("client_no_context_takeover", None) if !cnct => cnct = true,
            ("server_max_window_bits", Some(v)) if smwb.is_none() => smwb = Some(window_bits(v)?),
            ("client_max_window_bits", v) if cmwb.is_none() => {
                cmwb = Some(match v {
                    Some(v) => Some(window_bits(v)?),
                    None => None,
                })
            }
            _ => return None,
        }
    }
    let server_bits = smwb
        .unwrap_or(15)
        .min(config.server_max_window_bits.clamp(9, 15));
    if server_bits < 9 {
        return None;
    }
    let params = DeflateParams {
        server_no_context_takeover: snct || config.server_no_context_takeover,
        client_no_context_takeover: cnct || config.client_no_context_takeover,
        server_max_window_bits: server_bits,
        // A client that did not offer client_max_window_bits may use the full window (§7.1.2.2).
        client_max_window_bits: match cmwb {
            Some(offered) => offered
                .unwrap_or(15)
                .min(config.client_max_window_bits.clamp(9, 15)),
            None => 15,
        },
    };
    let mut response = String::from("permessage-deflate");
    if params.server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if params.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if smwb.is_some() {
        response.push_str(&format!(
            "; server_max_window_bits={}",
            params.server_max_window_bits
        ));
    }
    if cmwb.is_some() && params.client_max_window_bits < 15 {
        response.push_str(&format!(
            "; client_max_window_bits={}",
            params.client_max_window_bits
        ));
    }
    Some((params, response))
}

fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) || v.starts_with('0') {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"'),
        None => Some(v),
    }
}

/// Splits a header value on `sep`, ignoring separators inside quoted strings.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut done = false;
    let mut chars = s.char_indices();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        for (i, c) in chars.by_ref() {
            if c == '"' {
                quoted = !quoted;
            } else if c == sep && !quoted {
                let part = &s[start..i];
                start = i + c.len_utf8();
                return Some(part);
            }
        }
        done = true;
        Some(&s[start..])
    })
}

const POOL_MAX: usize = 8;

thread_local! {
    /// Compressors reset after use, keyed by (level, window bits). Borrowed per message when the
    /// server does not take over context, which is the default.
    static COMPRESSORS: RefCell<Vec<(u32, u8, Compress)>> = const { RefCell::new(Vec::new()) };
    /// Inflaters reset after use, keyed by window bits.
    static INFLATERS: RefCell<Vec<(u8, Decompress)>> = const { RefCell::new(Vec::new()) };
}

/// Compresses a whole message with a pooled compressor and no context kept afterwards.
pub(crate) fn compress_standalone(payload: &[u8], level: u32, window_bits: u8) -> Option<Bytes> {
    let mut c = COMPRESSORS
        .with_borrow_mut(|pool| {
            let i = pool
                .iter()
                .position(|(l, b, _)| *l == level && *b == window_bits)?;
            Some(pool.swap_remove(i).2)
        })
        .unwrap_or_else(|| {
            Compress::new_with_window_bits(Compression::new(level), false, window_bits)
        });
    let out = compress_with(&mut c, payload)?;
    c.reset();
    COMPRESSORS.with_borrow_mut(|pool| {
        if pool.len() < POOL_MAX {
            pool.push((level, window_bits, c));
        }
    });
    Some(out)
}

/// Compresses a whole message with `c`, ending with a sync flush whose tail is removed (§7.2.1).
///
/// `None` if zlib reports an error (it cannot on valid state, but the caller then simply sends the
/// message uncompressed rather than trusting the stream).
pub(crate) fn compress_with(c: &mut Compress, payload: &[u8]) -> Option<Bytes> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let start = c.total_in();
    loop {
        let consumed = (c.total_in() - start) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(payload.len() / 4 + 64);
        }
        c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        let consumed = (c.total_in() - start) as usize;
        if consumed == payload.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
    Some(Bytes::from(out))
}

/// Receiving side of one connection's permessage-deflate.
#[derive(Debug)]
pub(crate) struct Inflater {
    window_bits: u8,
    keep: bool,
    state: Option<Decompress>,
    /// The current message's DEFLATE stream ended with a BFINAL block (RFC 7692 §7.2.3.4): the rest of
    /// the message is ignored, and the next message starts a fresh stream.
    ended: bool,
}

impl Inflater {
    pub(crate) fn new(params: &DeflateParams) -> Self {
        Self {
            window_bits: params.client_max_window_bits.max(9),
            keep: !params.client_no_context_takeover,
            state: None,
            ended: false,
        }
    }

    /// Inflates one fragment of a compressed message into `out`, refusing to grow it past `max`.
    /// `last` puts back the sync-flush tail the sender removed.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        last: bool,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(), ProtocolError> {
        let bits = self.window_bits;
        let d = self.state.get_or_insert_with(|| {
            INFLATERS
                .with_borrow_mut(|pool| {
                    let i = pool.iter().position(|(b, _)| *b == bits)?;
                    Some(pool.swap_remove(i).1)
                })
                .unwrap_or_else(|| Decompress::new_with_window_bits(false, bits))
        });
        let mut result = Ok(());
        if !self.ended {
            result = inflate_into(d, input, out, max).map(|end| self.ended = end);
        }
        if result.is_ok() && last && !self.ended {
            result = inflate_into(d, &SYNC_TAIL, out, max).map(|end| self.ended = end);
        }
        if result.is_err() {
            // The stream is broken; the connection is about to be failed, never reuse this state.
            self.state = None;
            self.ended = false;
        } else if last {
            if std::mem::take(&mut self.ended)
                && let Some(d) = self.state.as_mut()
            {
                // After a final block zlib accepts nothing more; the sender's next message is a new stream.
                d.reset(false);
            }
            if !self.keep {
                self.release();
            }
        }
        result
    }

    /// Gives the inflater back to the pool (between messages, when the client takes over no context).
    fn release(&mut self) {
        if let Some(mut d) = self.state.take() {
            d.reset(false);
            let bits = self.window_bits;
            INFLATERS.with_borrow_mut(|pool| {
                if pool.len() < POOL_MAX {
                    pool.push((bits, d));
                }
            });
        }
    }
}

/// Inflates `input` into `out`. `Ok(true)` when the DEFLATE stream ended with a final block, after
/// which the rest of `input` is ignored.
fn inflate_into(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<bool, ProtocolError> {
    let start = d.total_in();
    loop {
        let consumed = (d.total_in() - start) as usize;
        if out.len() == out.capacity() {
            if out.len() > max {
                return Err(ProtocolError::MessageTooLarge { max });
            }
            // Grow in proportion to the input, but never more than one byte past the limit, so a
            // small bomb cannot make us allocate much beyond what we would accept.
            let want = (input.len() * 4).clamp(1024, 1 << 20);
            out.reserve_exact(want.min(max + 1 - out.len()));
        }
        let before_out = out.len();
        let status = d
            .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
            .map_err(|_| ProtocolError::InvalidDeflate)?;
        if out.len() > max {
            return Err(ProtocolError::MessageTooLarge { max });
        }
        let now_consumed = (d.total_in() - start) as usize;
        if status == Status::StreamEnd {
            return Ok(true);
        }
        if now_consumed == input.len() && out.len() < out.capacity() {
            return Ok(false);
        }
        if now_consumed == consumed && out.len() == before_out && out.len() < out.capacity() {
            return Err(ProtocolError::InvalidDeflate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(offer: &str) -> Option<(DeflateParams, String)> {
        negotiate([offer], &DeflateConfig::default())
    }

    #[test]
    fn browser_offer_gets_no_context_takeover_both_ways() {
        let (p, resp) = neg("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(
            resp,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (15, 15)
        );
    }

    #[test]
    fn window_bits_are_echoed_or_lowered() {
        let (p, resp) =
            neg("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9").unwrap();
        assert_eq!(p.server_max_window_bits, 10);
        assert_eq!(p.client_max_window_bits, 9);
        assert!(
            resp.contains("server_max_window_bits=10") && resp.contains("client_max_window_bits=9")
        );
        let cfg = DeflateConfig {
            server_max_window_bits: 11,
            client_max_window_bits: 12,
            ..DeflateConfig::default()
        };
        let (p, resp) = negotiate(
            ["permessage-deflate; server_max_window_bits=\"13\"; client_max_window_bits"],
            &cfg,
        )
        .unwrap();
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (11, 12)
        );
        assert!(
            resp.ends_with("server_max_window_bits=11; client_max_window_bits=12"),
            "{resp}"
        );
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; foo",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(neg(bad), None, "{bad}");
        }
        let (p, _) =
            neg("permessage-deflate; foo, permessage-deflate; server_max_window_bits=12").unwrap();
        assert_eq!(p.server_max_window_bits, 12);
        let disabled = DeflateConfig {
            enabled: false,
            ..DeflateConfig::default()
        };
        assert_eq!(negotiate(["permessage-deflate"], &disabled), None);
    }

    #[test]
    fn round_trips_across_fragments_and_bits() {
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog; ".repeat(200);
        for bits in 9..=15 {
            let compressed = compress_standalone(&text, 1, bits).unwrap();
            assert!(compressed.len() < text.len() / 4);
            let params = DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 15,
                client_max_window_bits: bits,
            };
            let mut inf = Inflater::new(&params);
            let mut out = Vec::new();
            let (a, b) = compressed.split_at(compressed.len() / 3);
            inf.inflate(a, false, &mut out, 1 << 20).unwrap();
            inf.inflate(b, true, &mut out, 1 << 20).unwrap();
            assert_eq!(out, text);
        }
    }

    #[test]
    fn a_final_block_ends_the_message_and_the_next_one_starts_fresh() {
        // RFC 7692 §7.2.3.4: "Hello" in a DEFLATE block with BFINAL set, then a 0x00 byte.
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        for client_no_context_takeover in [true, false] {
            let params = DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            };
            let mut inf = Inflater::new(&params);
            for _ in 0..2 {
                let mut out = Vec::new();
                inf.inflate(&bfinal, true, &mut out, 1024).unwrap();
                assert_eq!(out, b"Hello");
            }
            // And a regular message after it.
            let mut out = Vec::new();
            inf.inflate(
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                true,
                &mut out,
                1024,
            )
            .unwrap();
            assert_eq!(out, b"Hello");
        }
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = compress_standalone(&zeros, 9, 15).unwrap();
        assert!(bomb.len() < 20_000);
        let params = DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        };
        let mut out = Vec::new();
        let err = Inflater::new(&params).inflate(&bomb, true, &mut out, 1 << 20);
        assert_eq!(err, Err(ProtocolError::MessageTooLarge { max: 1 << 20 }));
        assert!(out.capacity() <= (1 << 20) + 1);
        let mut out = Vec::new();
        let err = Inflater::new(&params).inflate(&[0xff; 64], true, &mut out, 1 << 20);
        assert_eq!(err, Err(ProtocolError::InvalidDeflate));
    }
}
