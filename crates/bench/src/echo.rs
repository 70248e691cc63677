//! The messages of the echo tests (`tput`, `idle`): pre-built masked text frames of one size,
//! one per slot, each with a payload no other slot has, and the byte-for-byte check of their
//! echoes (a WebSocket frame back, or the very bytes sent for the raw TCP peer).

use anyhow::{Result, ensure};

use crate::ws::{OP_CLOSE, OP_TEXT, mask, masked_frame, parse_server_frame};

/// The text payload of message `slot`, `size` bytes long: an 8-digit slot number followed by a
/// letter pattern, so a reordered or corrupted echo cannot match.
pub fn payload(size: usize, slot: usize) -> Vec<u8> {
    let digits = format!("{slot:08}");
    (0..size)
        .map(|i| match digits.as_bytes().get(i) {
            Some(&d) => d,
            None => b'a' + ((i + slot) % 26) as u8,
        })
        .collect()
}

/// What goes over the wire: WebSocket frames after an upgrade, or (for the raw TCP peer) the
/// same masked frame bytes with no handshake, echoed back unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// RFC 6455: upgrade handshake, masked frames out, unmasked frames back.
    WebSocket,
    /// Plain TCP: the masked frame bytes go out and must come back byte for byte.
    Raw,
}

/// The pre-built messages of one connection: `slots` different masked frames of the same length,
/// sent round-robin, with what must come back for each.
pub struct Messages {
    wire: Wire,
    slots: usize,
    frame_len: usize,
    /// All frames, twice in a row, so any run of up to `slots` consecutive slots is one slice.
    frames: Vec<u8>,
    payloads: Vec<Vec<u8>>,
}

impl Messages {
    /// Builds `slots` text messages of `size` bytes for `wire`.
    pub fn new(wire: Wire, size: usize, slots: usize) -> Self {
        let slots = slots.max(1);
        let payloads: Vec<Vec<u8>> = (0..slots).map(|slot| payload(size, slot)).collect();
        let one_round: Vec<u8> = payloads
            .iter()
            .enumerate()
            .flat_map(|(slot, p)| masked_frame(OP_TEXT, p, mask(slot as u64)))
            .collect();
        let frame_len = one_round.len() / slots;
        let frames = [one_round.as_slice(), one_round.as_slice()].concat();
        Self {
            wire,
            slots,
            frame_len,
            frames,
            payloads,
        }
    }

    /// What goes over the wire.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// Number of distinct slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The bytes of `count` consecutive frames starting at `slot` (`count` at most `slots`).
    pub fn frames(&self, slot: usize, count: usize) -> &[u8] {
        let start = (slot % self.slots) * self.frame_len;
        &self.frames[start..start + count.min(self.slots) * self.frame_len]
    }

    /// Takes the echo of `slot` from the front of `buf` if it is complete: `Ok(Some(n))` with the
    /// bytes it used, `Ok(None)` if more bytes are needed, an error if it is not the exact echo.
    pub fn take_echo(&self, buf: &[u8], slot: usize) -> Result<Option<usize>> {
        let slot = slot % self.slots;
        match self.wire {
            Wire::Raw => {
                let Some(got) = buf.get(..self.frame_len) else {
                    return Ok(None);
                };
                ensure!(
                    got == self.frames(slot, 1),
                    "raw echo of slot {slot} differs from what was sent"
                );
                Ok(Some(self.frame_len))
            }
            Wire::WebSocket => {
                let Some((frame, used)) = parse_server_frame(buf)? else {
                    return Ok(None);
                };
                ensure!(
                    frame.opcode != OP_CLOSE,
                    "server sent a close frame {:?}",
                    frame.payload
                );
                ensure!(
                    frame.fin && frame.opcode == OP_TEXT,
                    "expected a final text frame, got opcode {:#x} fin {}",
                    frame.opcode,
                    frame.fin
                );
                ensure!(
                    frame.payload == self.payloads[slot].as_slice(),
                    "echo of slot {slot} differs from what was sent ({} bytes back)",
                    frame.payload.len()
                );
                Ok(Some(used))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::server_frame;

    #[test]
    fn payloads_differ_per_slot() {
        assert_eq!(payload(12, 7), b"00000007pqrs");
        assert_ne!(payload(64, 1), payload(64, 27));
        assert_eq!(payload(3, 5), b"000");
    }

    #[test]
    fn messages_check_echoes_byte_for_byte() {
        let msgs = Messages::new(Wire::WebSocket, 64, 4);
        let echo = server_frame(OP_TEXT, &payload(64, 2));
        assert_eq!(msgs.take_echo(&echo, 2).expect("valid"), Some(echo.len()));
        assert!(
            msgs.take_echo(&echo, 1).is_err(),
            "echo of another slot must not match"
        );
        assert_eq!(msgs.take_echo(&echo[..10], 2).expect("valid"), None);
        assert_eq!(
            msgs.frames(3, 2).len(),
            2 * msgs.frames(0, 1).len(),
            "wraps around"
        );

        let raw = Messages::new(Wire::Raw, 64, 4);
        let sent = raw.frames(1, 1).to_vec();
        assert_eq!(raw.take_echo(&sent, 1).expect("valid"), Some(sent.len()));
        assert!(raw.take_echo(&sent, 0).is_err());
    }
}
