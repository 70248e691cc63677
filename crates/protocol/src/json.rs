//! The one rule for JSON that switchboard accepts and forwards.
//!
//! Switchboard passes JSON from publishers to subscribers without parsing it into values: a payload
//! is checked once and then forwarded as the bytes it came as. Every subscriber parses it with its own
//! parser (serde_json in the Rust client, `JSON.parse` in browsers, Python's `json` in handlers), and
//! those parsers disagree on some texts that are valid JSON grammar. A text one of them refuses makes
//! that subscriber lose the message; a text they read differently makes subscribers see different
//! data. So JSON is accepted only where they all agree:
//!
//! - arrays and objects nest at most [`MAX_DEPTH`] levels (serde_json's own recursion limit, and a
//!   bound on every parser's stack);
//! - every number is finite as a 64-bit float (`1e400` overflows: serde_json refuses it, JavaScript
//!   reads `Infinity`);
//! - an integer written without fraction or exponent lies within ±[`MAX_SAFE_INTEGER`]: beyond it
//!   JavaScript rounds (`9007199254740993` reads as `...992`) while serde_json and Python keep it
//!   exactly. Such numbers go as strings; a float (`1.5e300`) is read alike everywhere and is fine;
//! - every `\uXXXX` escape of a UTF-16 surrogate is part of a pair (`"\ud800"` alone is refused by
//!   serde_json and kept as an unpaired surrogate by JavaScript and Python).
//!
//! [`check`] applies the rule to a text that a JSON grammar parser (serde_json) also accepts; each
//! entry point (client commands, the server API, proxy answers, token claims) calls it once on the
//! whole text it received, so there is one rule in one place. It never panics, whatever the bytes.

/// Deepest nesting of arrays and objects accepted, counted from the outermost value of the text.
pub const MAX_DEPTH: usize = 128;

/// Largest integer magnitude accepted when written without fraction or exponent: JavaScript's
/// `Number.MAX_SAFE_INTEGER`, 2^53 - 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// What makes a JSON text break the rule. Messages name the offending token so the sender can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A number that is not finite as a 64-bit float.
    #[error("number {0} is out of the range of a 64-bit float")]
    NumberOutOfRange(String),
    /// An integer beyond ±[`MAX_SAFE_INTEGER`].
    #[error(
        "integer {0} is beyond ±9007199254740991, where JavaScript loses precision: send it as a string"
    )]
    UnsafeInteger(String),
    /// A `\uXXXX` surrogate escape without its other half.
    #[error("string has an unpaired UTF-16 surrogate escape \\u{0}")]
    LoneSurrogate(String),
}

/// Serde helper for a raw JSON field that may be `null`: `#[serde(borrow, default, deserialize_with =
/// "switchboard_protocol::json::present")]` reads a field that is there as `Some`, `null` included
/// (`data` is any JSON), and an absent one as `None` (by `default`). Plain `Option<&RawValue>` reads
/// `null` as absent.
pub fn present<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'a serde_json::value::RawValue>, D::Error> {
    <&serde_json::value::RawValue as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// Checks a JSON text against the rule of this module. The text's grammar is left to serde_json (every
/// caller parses it too); on text that is not JSON this returns an error or `Ok`, never panics.
pub fn check(json: &str) -> Result<(), JsonError> {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = check_string(bytes, i + 1)?,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(JsonError::TooDeep);
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => i = check_number(json, i)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// How deep arrays and objects nest in `json`, outside strings. For a reader that must bound its parser's
/// stack before parsing (a client reading frames that wrap a payload in a few more levels).
pub fn depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Scans a string from just after its opening quote; returns the index after its closing quote.
fn check_string(bytes: &[u8], mut i: usize) -> Result<usize, JsonError> {
    // A high surrogate escape waiting for its low half, which must be the very next escape.
    let mut pending_high: Option<u16> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                return match pending_high {
                    Some(high) => Err(JsonError::LoneSurrogate(format!("{high:04x}"))),
                    None => Ok(i + 1),
                };
            }
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let unit = bytes
                    .get(i + 2..i + 6)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                let Some(unit) = unit else {
                    // Not JSON at all: serde_json reports it.
                    i += 2;
                    continue;
                };
                match (pending_high.take(), unit) {
                    (Some(_), 0xDC00..=0xDFFF) => {}
                    (Some(high), _) => return Err(JsonError::LoneSurrogate(format!("{high:04x}"))),
                    (None, 0xD800..=0xDBFF) => pending_high = Some(unit),
                    (None, 0xDC00..=0xDFFF) => {
                        return Err(JsonError::LoneSurrogate(format!("{unit:04x}")));
                    }
                    (None, _) => {}
                }
                i += 6;
            }
            other => {
                if let Some(high) = pending_high {
                    return Err(JsonError::LoneSurrogate(format!("{high:04x}")));
                }
                // An escape takes two bytes; `\"` must not end the string.
                i += if other == b'\\' { 2 } else { 1 };
            }
        }
    }
    Ok(i)
}

/// Scans a number starting at `start`; returns the index after it.
fn check_number(json: &str, start: usize) -> Result<usize, JsonError> {
    let bytes = json.as_bytes();
    let mut end = start + 1;
    let mut integer = true;
    while let Some(&b) = bytes.get(end) {
        match b {
            b'0'..=b'9' => {}
            b'.' | b'e' | b'E' | b'+' | b'-' => integer = false,
            _ => break,
        }
        end += 1;
    }
    let token = &json[start..end];
    let shown = || shorten(token);
    if integer {
        let digits = token.strip_prefix('-').unwrap_or(token);
        let is_integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        // Beyond 16 digits the value exceeds 2^53 (JSON forbids the leading zeros that could pad it).
        if is_integer
            && (digits.len() > 16 || digits.parse::<u64>().map_or(true, |m| m > MAX_SAFE_INTEGER))
        {
            return Err(JsonError::UnsafeInteger(shown()));
        }
    } else if let Ok(value) = token.parse::<f64>()
        && !value.is_finite()
    {
        return Err(JsonError::NumberOutOfRange(shown()));
    }
    Ok(end)
}

/// A token as shown in an error message: whole when short, its start otherwise.
fn shorten(token: &str) -> String {
    const SHOWN: usize = 40;
    if token.len() <= SHOWN {
        token.to_owned()
    } else {
        format!("{}...", &token[..SHOWN])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_every_parser_reads_alike() {
        for ok in [
            "null",
            r#"{"a":[1,2.5,-3,true,false,null,"x"]}"#,
            "9007199254740991",
            "-9007199254740991",
            "1.5e300",
            "1e-400",
            "12345678901234567890.0",
            "0",
            "-0",
            r#""\ud83d\ude00""#,
            r#""\u00e9 \n \\u\"""#,
            r#""[[[[{{{""#,
            r#""\\ud800""#,
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
            assert!(
                serde_json::from_str::<serde_json::Value>(ok).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn refuses_numbers_outside_f64_and_unsafe_integers() {
        assert!(matches!(
            check("[1E0040000000000000]"),
            Err(JsonError::NumberOutOfRange(_))
        ));
        assert!(matches!(
            check("-1e309"),
            Err(JsonError::NumberOutOfRange(_))
        ));
        assert!(matches!(
            check(r#"{"n":9007199254740992}"#),
            Err(JsonError::UnsafeInteger(n)) if n == "9007199254740992"
        ));
        assert!(matches!(
            check("-123456789012345678901234567890"),
            Err(JsonError::UnsafeInteger(_))
        ));
        let long = format!("1{}", "0".repeat(100));
        let err = check(&long).unwrap_err().to_string();
        assert!(err.len() < 200, "the message shows the start only: {err}");
    }

    #[test]
    fn refuses_unpaired_surrogates() {
        for bad in [
            r#""\ud800""#,
            r#""\uD800x""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800\n""#,
            r#"{"k\ud800":1}"#,
        ] {
            assert!(
                matches!(check(bad), Err(JsonError::LoneSurrogate(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn bounds_nesting_outside_strings() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check(&deep(MAX_DEPTH)), Ok(()));
        // A text is held to the bound as a whole, so the payload inside any accepted command or body
        // is at most 127 deep, which serde_json (the Rust client's parser) reads.
        assert!(serde_json::from_str::<serde_json::Value>(&deep(MAX_DEPTH - 1)).is_ok());
        assert_eq!(check(&deep(MAX_DEPTH + 1)), Err(JsonError::TooDeep));
        assert_eq!(check(&deep(100_000)), Err(JsonError::TooDeep));
        assert_eq!(depth(&deep(300)), 300);
        assert_eq!(depth(r#"[{"a":"[[\\"}]"#), 2);
    }

    #[test]
    fn the_fuzzing_find_is_refused() {
        let line = r#"{"id":3,"publish":{"channel":"c","data":{"t@ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp]":[1E0040000000000000]}}}"#;
        assert!(matches!(check(line), Err(JsonError::NumberOutOfRange(_))));
    }

    #[test]
    fn never_panics_on_garbage() {
        for junk in [
            "\"",
            "\"\\",
            "\"\\u",
            "\"\\u12",
            "\"\\uzzzz\"",
            "-",
            "--",
            "1e",
            "]]]]",
            "\"\\ud800",
            "\"\\ud800\\",
            "1.2.3e+-",
        ] {
            let _ = check(junk);
        }
    }
}
