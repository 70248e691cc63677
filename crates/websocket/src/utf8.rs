//! Incremental UTF-8 validation, so that a text message split across fragments (or inflated piece by
//! piece) fails as soon as its bytes can no longer become valid UTF-8 (RFC 6455 §8.1, "fail fast").

use crate::error::ProtocolError;

/// Validates a text message one chunk at a time.
///
/// Holds at most the three bytes of a character cut by a chunk boundary; everything else is checked
/// in place by `simdutf8`, so a message that arrives whole costs one SIMD pass.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Validator {
    /// Checks the next chunk. Fails when the bytes seen so far cannot start any valid UTF-8 text.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ProtocolError> {
        while self.pending_len > 0 {
            let Some((&b, rest)) = data.split_first() else {
                return Ok(());
            };
            data = rest;
            self.pending[self.pending_len] = b;
            self.pending_len += 1;
            match std::str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(ProtocolError::InvalidUtf8),
                Err(_) => {}
            }
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(ProtocolError::InvalidUtf8),
            Err(e) => {
                // A character cut at the end of the chunk: keep its first bytes for the next one.
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                Ok(())
            }
        }
    }

    /// Checks that the message does not end in the middle of a character.
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let complete = self.pending_len == 0;
        self.pending_len = 0;
        if complete {
            Ok(())
        } else {
            Err(ProtocolError::InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(text: &[u8]) -> Vec<Result<(), ProtocolError>> {
        (0..=text.len())
            .map(|cut| {
                let mut v = Utf8Validator::default();
                v.feed(&text[..cut])?;
                v.feed(&text[cut..])?;
                v.finish()
            })
            .collect()
    }

    #[test]
    fn valid_text_passes_at_every_cut() {
        let text = "κόσμε, 𝄞 and plain ascii".as_bytes();
        assert!(split_everywhere(text).iter().all(Result::is_ok));
    }

    #[test]
    fn invalid_text_fails_at_every_cut() {
        for bad in [
            &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"[..],
            b"\xf4\x90\x80\x80",
            b"ab\xff",
        ] {
            assert!(split_everywhere(bad).iter().all(Result::is_err), "{bad:?}");
        }
    }

    #[test]
    fn fails_fast_before_the_message_ends() {
        let mut v = Utf8Validator::default();
        // 0xF4 0x90 can never start a valid character (above U+10FFFF), even though more bytes may follow.
        assert_eq!(v.feed(b"ok\xf4"), Ok(()));
        assert_eq!(v.feed(b"\x90"), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn a_cut_character_at_the_end_is_an_error() {
        let mut v = Utf8Validator::default();
        v.feed("é".as_bytes().split_at(1).0).unwrap();
        assert_eq!(v.finish(), Err(ProtocolError::InvalidUtf8));
    }
}
