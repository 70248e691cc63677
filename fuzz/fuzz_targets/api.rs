//! The server API's request bodies (`crates/api`): `switchboard_api::call_method`, what
//! `POST /api/<method>` runs once the key is checked and the body read, on a fresh memory-engine node.
//!
//! Input: `method` (up to the first newline), then the JSON body. Checks: no panic; an answer is a
//! JSON object; a failure is a 4xx (the memory engine never fails, so a 5xx is a bug), an unknown
//! method is 404 and a known one never is; and the error says something. A body that was accepted
//! keeps the JSON rule (`switchboard_protocol::json`, issue 18), and its `data`, when it has one, parses
//! into a `serde_json::Value`: what every subscriber's parser is promised.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use switchboard_hub::ClientConfig;

fuzz_target!(|data: &[u8]| {
    let (method, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let method = String::from_utf8_lossy(method);
    let rt = common::runtime();
    rt.block_on(async {
        let node = common::node(ClientConfig::default());
        match switchboard_api::call_method(&node, &method, body).await {
            Ok(result) => {
                assert!(
                    result.is_object(),
                    "{method}: result {result} is not an object"
                );
                if !body.iter().all(u8::is_ascii_whitespace) {
                    let text = std::str::from_utf8(body).expect("an accepted body is UTF-8");
                    assert_eq!(
                        switchboard_protocol::json::check(text),
                        Ok(()),
                        "{method}: {text}"
                    );
                    let fields: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
                        serde_json::from_str(text).expect("an accepted body is an object");
                    if let Some(data) = fields.get("data") {
                        assert!(
                            serde_json::from_str::<serde_json::Value>(data.get()).is_ok(),
                            "{method}: data {}",
                            data.get()
                        );
                    }
                }
            }
            Err(e) => {
                assert!(
                    e.status.is_client_error(),
                    "{method}: status {} ({})",
                    e.status,
                    e.message
                );
                let known = switchboard_api::METHODS.contains(&method.as_ref());
                assert_eq!(
                    e.status == 404,
                    !known,
                    "{method}: {} {}",
                    e.status,
                    e.message
                );
                assert!(!e.message.is_empty(), "{method}: empty error message");
            }
        }
    });
});
