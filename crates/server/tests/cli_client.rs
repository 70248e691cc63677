//! `switchboard subscribe` and `switchboard publish`, the real binary against a server started
//! in-process: JSON lines on stdout, publishing through the API, as a client and from stdin, exit
//! codes, and ending cleanly on SIGINT or when the reader of stdout goes away.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::Config;
use switchboard_hub::NamespaceOptions;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const API_KEY: &str = "cli-test-key";

fn config() -> Config {
    let mut c = Config::default();
    c.api.key = API_KEY.into();
    c.channels.default = NamespaceOptions {
        history_size: 1000,
        history_ttl: Duration::from_secs(300),
        recover: true,
        allow_publish: true,
        ..Default::default()
    };
    c.channels.namespaces.insert(
        "readonly".into(),
        NamespaceOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..Default::default()
        },
    );
    c
}

fn url(s: &TestServer) -> String {
    format!("ws://{}/connection/websocket", s.addr)
}

fn api(s: &TestServer) -> String {
    format!("http://{}", s.api)
}

/// A running `switchboard subscribe`.
struct Subscriber {
    child: Child,
    stdout: Option<Lines<BufReader<ChildStdout>>>,
    stderr: Arc<Mutex<String>>,
}

impl Subscriber {
    /// Starts `switchboard subscribe CHANNEL --url ... EXTRA` and waits until it has subscribed.
    async fn start(s: &TestServer, channel: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["subscribe", channel, "--url", &url(s)])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("subscribed to")
                    && let Some(tx) = subscribed_tx.take()
                {
                    let _ = tx.send(());
                }
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
            }
        });
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = tokio::time::timeout(WAIT, subscribed).await;
        assert!(
            matches!(started, Ok(Ok(()))),
            "subscribe did not subscribe: {}",
            stderr.lock().unwrap()
        );
        Self {
            child,
            stdout: Some(stdout),
            stderr,
        }
    }

    /// The next line of stdout, parsed.
    async fn line(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.stdout.as_mut().unwrap().next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("a line before stdout ends");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Waits for the exit and returns its code.
    async fn exit_code(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("subscribe did not exit: {}", self.stderr.lock().unwrap()))
            .unwrap();
        status.code()
    }
}

/// Runs the binary to completion with `stdin`: its exit code, stdout and stderr.
async fn run(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SWITCHBOARD_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("exits in time")
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn subscribe_prints_what_publish_sends_through_the_api_as_a_client_and_from_stdin() {
    let s = start(config()).await;
    let mut sub = Subscriber::start(&s, "news", &["--count", "3"]).await;
    let (api, url) = (api(&s), url(&s));

    let (code, out, err) = run(
        &[
            "publish",
            "news",
            r#"{"n":1}"#,
            "--api",
            &api,
            "--api-key",
            API_KEY,
        ],
        "",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let result: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(result["offset"], 1, "{out}");

    let (code, out, err) = run(
        &[
            "publish",
            "news",
            r#"{"n":2}"#,
            "--as-client",
            "--url",
            &url,
        ],
        "",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"offset\":2"), "{out}");

    let (code, _, err) = run(
        &["publish", "news", "-", "--api", &api, "--api-key", API_KEY],
        "{\"n\":3}\n",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("published 1 to news"), "{err}");

    for n in 1..=3 {
        let line = sub.line().await;
        assert_eq!(
            (&line["channel"], &line["offset"], &line["data"]),
            (&json!("news"), &json!(n), &json!({ "n": n })),
            "{line}"
        );
    }
    assert_eq!(sub.exit_code().await, Some(0));
    assert!(
        sub.stdout
            .as_mut()
            .unwrap()
            .next_line()
            .await
            .unwrap()
            .is_none(),
        "exactly 3 lines"
    );
}

#[tokio::test]
async fn a_long_stdin_arrives_in_order_and_as_text() {
    let s = start(config()).await;
    let mut sub = Subscriber::start(&s, "logs", &["--count", "300"]).await;
    let input: String = (1..=300).map(|n| format!("log line {n}\n")).collect();
    let (code, _, err) = run(
        &[
            "publish",
            "logs",
            "-",
            "--text",
            "--as-client",
            "--url",
            &url(&s),
        ],
        &input,
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    for n in 1..=300 {
        let line = sub.line().await;
        assert_eq!(line["offset"], n);
        assert_eq!(line["data"], format!("log line {n}"));
    }
    assert_eq!(sub.exit_code().await, Some(0));

    // Without --text, lines that are not JSON are skipped, said so, and make the exit code 1.
    let (code, _, err) = run(
        &[
            "publish",
            "logs",
            "-",
            "--api",
            &api(&s),
            "--api-key",
            API_KEY,
        ],
        "{\"ok\":true}\nnot json\n",
    )
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 2 is not JSON"), "{err}");
    let (_, history) = api_call(
        s.api,
        Some(API_KEY),
        "history",
        r#"{"channel":"logs","limit":1,"reverse":true}"#,
    )
    .await;
    assert_eq!(
        history["result"]["publications"][0]["data"],
        json!({"ok": true})
    );
}

#[tokio::test]
async fn refusals_exit_with_2_and_usage_errors_with_1() {
    let s = start(config()).await;
    let (api, url) = (api(&s), url(&s));

    let (code, _, err) = run(
        &["publish", "news", "1", "--api", &api, "--api-key", "wrong"],
        "",
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("error 101"), "{err}");

    let (code, _, err) = run(
        &["publish", "readonly:x", "1", "--as-client", "--url", &url],
        "",
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("103"), "{err}");

    let (code, _, err) = run(&["subscribe", "nowhere:x", "--url", &url], "").await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("102"), "{err}");

    for (args, what) in [
        (
            vec![
                "publish",
                "news",
                "{oops",
                "--api",
                &api,
                "--api-key",
                API_KEY,
            ],
            "not JSON",
        ),
        (vec!["publish", "news"], "DATA"),
        (vec!["publish", "news", "1", "--bogus"], "--bogus"),
        (vec!["subscribe", "news", "--url", "http://x/"], "ws://"),
        (
            vec!["publish", "news", "1", "--api", &api, "--api-key", ""],
            "no API key",
        ),
    ] {
        let (code, _, err) = run(&args, "").await;
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: {err}");
    }

    // Nobody listening: a connection problem, reported with the address.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("ws://{}/connection/websocket", free.local_addr().unwrap());
    drop(free);
    let (code, _, err) = run(&["subscribe", "news", "--url", &gone], "").await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn subscribe_ends_quietly_on_sigint_and_when_its_reader_goes_away() {
    let s = start(config()).await;
    let mut sub = Subscriber::start(&s, "news", &[]).await;
    let pid = sub.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(sub.exit_code().await, Some(0));

    // `| head -n 1`: the reader takes one line and closes the pipe. The subscriber must exit without
    // waiting for a next publication to fail writing, and without an error.
    let mut sub = Subscriber::start(&s, "news", &[]).await;
    api_call(
        s.api,
        Some(API_KEY),
        "publish",
        r#"{"channel":"news","data":"first"}"#,
    )
    .await;
    assert_eq!(sub.line().await["data"], "first");
    drop(sub.stdout.take());
    assert_eq!(sub.exit_code().await, Some(0));
    let err = sub.stderr.lock().unwrap().clone();
    assert!(!err.contains("error"), "{err}");
}
