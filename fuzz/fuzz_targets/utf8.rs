//! `Utf8Validator` fed in fuzzer-chosen chunks against `std::str::from_utf8` on the whole input.
//!
//! Input layout: `[n, len_1 .. len_n, text ..]`: `n % 16` chunk sizes of 0..=255 bytes, the rest of
//! the text is the last chunk.
//!
//! Checks: valid text passes every `feed` and `finish`; invalid text fails one of them; and the
//! validator fails fast and only then: a `feed` succeeds exactly when everything fed so far is valid
//! UTF-8 or a prefix of it (RFC 6455 §8.1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_websocket::Utf8Validator;

/// Valid UTF-8, or valid up to a character cut off at the end.
fn could_become_valid(prefix: &[u8]) -> bool {
    match std::str::from_utf8(prefix) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, text) = rest.split_at(n);

    let mut chunks = Vec::with_capacity(n + 1);
    let mut tail = text;
    for &size in sizes {
        let (chunk, more) = tail.split_at(usize::from(size).min(tail.len()));
        chunks.push(chunk);
        tail = more;
    }
    chunks.push(tail);

    let mut v = Utf8Validator::default();
    let mut fed = 0;
    let mut failed = false;
    for chunk in chunks {
        fed += chunk.len();
        let ok = v.feed(chunk).is_ok();
        assert_eq!(
            ok,
            could_become_valid(&text[..fed]),
            "feed disagrees with std after {fed} bytes"
        );
        if !ok {
            failed = true;
            break;
        }
    }
    if !failed {
        failed = v.finish().is_err();
    }
    assert_eq!(
        !failed,
        std::str::from_utf8(text).is_ok(),
        "verdict disagrees with std"
    );
});
