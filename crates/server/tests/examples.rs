//! The handler examples run for real: `examples/php` under `php -S` and `examples/python` under
//! `python3`, each with its own switchboard config. A user logs in to the app, connects to switchboard
//! with only the app's session cookie (the connect proxy names the user), and a message another user
//! pushes through the app (the app calls switchboard's API) reaches them.
//!
//! Needs `php` (Debian's `php-cli`) and `python3` on the PATH; `scripts/setup.sh` installs them.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use switchboard::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A backend process, killed when dropped.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts switchboard with `examples/<name>/switchboard.toml`, its proxies pointed at a backend on a
/// free port, then the backend via `command`.
async fn run(
    name: &str,
    command: impl FnOnce(u16) -> Command,
) -> (TestServer, Backend, SocketAddr) {
    let port = free_port();
    let text = std::fs::read_to_string(examples().join(name).join("switchboard.toml")).unwrap();
    let mut config = Config::from_toml(&text).unwrap();
    let backend = format!("http://127.0.0.1:{port}");
    for url in [&mut config.proxy.connect, &mut config.proxy.rpc] {
        let path = url
            .as_deref()
            .unwrap()
            .split_once("/switchboard/")
            .unwrap()
            .1;
        *url = Some(format!("{backend}/switchboard/{path}"));
    }
    let server = start(config).await;
    let mut cmd = command(port);
    cmd.env("SWITCHBOARD_API_URL", format!("http://{}", server.api))
        .env("EXAMPLE_QUIET", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start the {name} example ({e}); install php-cli and python3 (scripts/setup.sh)"
        )
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        assert!(started.elapsed() < WAIT, "the {name} example did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, Backend(child), addr)
}

/// A POST to the app; returns the status, the JSON body and the session cookie it set, if any.
async fn post(
    app: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    body: Value,
) -> (u16, Value, Option<String>) {
    let body = body.to_string();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {app}\r\n{cookie}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(app).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let set_cookie = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("set-cookie")
            .then(|| v.trim().split(';').next().unwrap().to_owned())
    });
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        set_cookie,
    )
}

async fn login(app: SocketAddr, user: &str) -> String {
    let (status, body, cookie) = post(app, "/login", None, json!({ "user": user })).await;
    assert_eq!(status, 200, "{body}");
    cookie.expect("a session cookie")
}

async fn scenario(name: &str, command: impl FnOnce(u16) -> Command) {
    let (s, _backend, app) = run(name, command).await;

    // Without a session the app refuses the connection (its own code), and switchboard ends it.
    let mut stranger = JsonClient::open(s.addr).await;
    let r = stranger.call("connect", json!({})).await;
    assert_eq!(r["error"]["code"], 1401, "{r}");
    assert_eq!(stranger.disconnected().await, (Some(3503), Some(3503)));

    // Alice logs in to the app; her WebSocket carries only the app's cookie.
    let cookie = login(app, "alice").await;
    let mut alice = JsonClient::open_with(s.addr, &[("Cookie", &cookie)]).await;
    let connect = alice.ok("connect", json!({})).await;
    assert!(connect["subs"]["news:alice"].is_object(), "{connect}");
    // Her personal channel is private: nobody subscribes to another's.
    assert_eq!(
        alice
            .error("subscribe", json!({"channel": "news:bob"}))
            .await,
        103
    );
    // RPC through the app knows who is calling.
    let r = alice.ok("rpc", json!({"method": "time"})).await;
    assert_eq!(r["data"]["user"], "alice", "{r}");

    // Bob pushes to Alice through the app, which calls switchboard's API and returns at once.
    let bob = login(app, "bob").await;
    let (status, answer, _) = post(
        app,
        "/notify",
        Some(&bob),
        json!({"to": "alice", "text": "hello from bob"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let p = alice.push("pub").await;
    assert_eq!(p["channel"], "news:alice");
    assert_eq!(p["data"], json!({"from": "bob", "text": "hello from bob"}));
}

#[tokio::test]
async fn the_php_example_authorises_and_pushes() {
    scenario("php", |port| {
        let mut c = Command::new("php");
        c.args(["-S", &format!("127.0.0.1:{port}"), "app.php"])
            .current_dir(examples().join("php"));
        c
    })
    .await;
}

#[tokio::test]
async fn the_python_example_authorises_and_pushes() {
    scenario("python", |port| {
        let mut c = Command::new("python3");
        c.args(["app.py", "--port", &port.to_string()])
            .current_dir(examples().join("python"));
        c
    })
    .await;
}
