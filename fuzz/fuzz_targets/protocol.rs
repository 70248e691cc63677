//! `switchboard_protocol::decode_command` on arbitrary frames: every line must decode to a command or
//! to a `DecodeError`, never panic; a decoded command must respect the documented bounds (id range,
//! JSON payloads that serde_json parses and that keep the JSON rule of `switchboard_protocol::json`).
//! "Parses" means into a `serde_json::Value`, the Rust client's parser: what the rule promises every
//! subscriber.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{
    Command, DecodeError, MAX_ID, Method, Payload, decode_command, json, lines,
};

fn parses_everywhere(raw: &[u8]) {
    let text = std::str::from_utf8(raw).expect("accepted JSON is UTF-8");
    assert_eq!(
        json::check(text),
        Ok(()),
        "accepted JSON keeps the rule: {text}"
    );
    assert!(
        serde_json::from_str::<serde_json::Value>(text).is_ok(),
        "{text}"
    );
}

fuzz_target!(|frame: &[u8]| {
    for line in lines(frame) {
        match decode_command(line) {
            Ok(Command { id, method }) => {
                assert!((1..=MAX_ID).contains(&id));
                match method {
                    Method::Publish(p) => {
                        if let Payload::Json(raw) = p.payload {
                            parses_everywhere(&raw);
                        }
                    }
                    Method::Rpc(r) => parses_everywhere(&r.data),
                    _ => {}
                }
            }
            Err(DecodeError::Command { id, .. }) => assert!((1..=MAX_ID).contains(&id)),
            Err(DecodeError::Frame(_)) => {}
        }
    }
});
