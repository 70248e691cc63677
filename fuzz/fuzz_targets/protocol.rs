//! `switchboard_protocol::decode_command` on arbitrary frames: every line must decode to a command or
//! to a `DecodeError`, never panic; a decoded command must respect the documented bounds (id range,
//! JSON payloads that are valid JSON, nesting within `MAX_DEPTH`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{Command, DecodeError, MAX_ID, Method, Payload, decode_command, lines};

fuzz_target!(|frame: &[u8]| {
    for line in lines(frame) {
        match decode_command(line) {
            Ok(Command { id, method }) => {
                assert!((1..=MAX_ID).contains(&id));
                match method {
                    Method::Publish(p) => {
                        if let Payload::Json(raw) = p.payload {
                            assert!(serde_json::from_slice::<serde_json::Value>(&raw).is_ok());
                        }
                    }
                    Method::Rpc(r) => assert!(serde_json::from_slice::<serde_json::Value>(&r.data).is_ok()),
                    _ => {}
                }
            }
            Err(DecodeError::Command { id, .. }) => assert!((1..=MAX_ID).contains(&id)),
            Err(DecodeError::Frame(_)) => {}
        }
    }
});
