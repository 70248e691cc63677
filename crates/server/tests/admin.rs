//! The operator's console against the real server: off by default and never on the client
//! listener, logins (password and token) with their rate limit, the cookie's flags, the Origin rule
//! for POSTs, the live stream, and actions reaching clients through the API's methods.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchboard::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "correct horse battery staple";
const SECRET: &str = "hmac-secret-for-admin-tests";

fn config() -> Config {
    let mut c = Config::default();
    c.admin.enabled = true;
    c.admin.password_hash = switchboard::admin::auth::hash_password(PASSWORD).unwrap();
    c.admin.max_failed_logins = 3;
    c.auth.hmac_secret = Some(SECRET.into());
    c.channels
        .namespaces
        .insert("news".into(), chat_namespace());
    c
}

async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Response {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n");
    request(addr, &raw).await.1
}

/// POSTs JSON with the given extra header lines (`Origin`, `Cookie`...).
async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    request(addr, &raw).await.1
}

fn origin(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Logs in with the password; the `name=value` of the session cookie.
async fn login(api: SocketAddr) -> String {
    let o = origin(api);
    let r = post(
        api,
        "/admin/login",
        &[("Origin", &o)],
        &json!({ "password": PASSWORD }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.header("set-cookie").unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

fn json_of(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or(Value::Null)
}

#[tokio::test]
async fn off_by_default_and_never_on_the_client_listener() {
    let s = start(Config::default()).await;
    for path in ["/admin/", "/admin/console.js", "/admin/api/session"] {
        assert_eq!(get(s.api, path, None).await.status, 404, "{path}");
    }
    let o = origin(s.api);
    let r = post(
        s.api,
        "/admin/login",
        &[("Origin", &o)],
        r#"{"password":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    s.handle.shutdown();

    let s = start(config()).await;
    for path in ["/admin/", "/admin/console.js", "/admin/api/session"] {
        assert_eq!(
            get(s.addr, path, None).await.status,
            404,
            "client listener: {path}"
        );
    }
    let page = get(s.api, "/admin/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/admin/console.js"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    // Everything the page loads is served by the binary, from its own origin.
    for asset in ["/admin/console.js", "/admin/console.css"] {
        assert_eq!(get(s.api, asset, None).await.status, 200, "{asset}");
    }
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no other host"
    );
    assert_eq!(get(s.api, "/admin/api/session", None).await.status, 401);
    // The API itself is as it was.
    assert_eq!(get(s.api, "/health", None).await.status, 200);
}

#[tokio::test]
async fn wrong_password_is_refused_then_rate_limited() {
    let s = start(config()).await;
    let o = origin(s.api);
    let wrong = json!({ "password": "hunter2" }).to_string();
    for _ in 0..3 {
        let r = post(s.api, "/admin/login", &[("Origin", &o)], &wrong).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.header("set-cookie"), None);
    }
    // Now even the right password is refused, and the answer says for how long.
    let right = json!({ "password": PASSWORD }).to_string();
    let r = post(s.api, "/admin/login", &[("Origin", &o)], &right).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=301).contains(&retry), "{retry}");
    assert_eq!(r.header("set-cookie"), None);
    // A token without the admin claim is a failed login too.
    let s2 = start(config()).await;
    let o2 = origin(s2.api);
    let user_token = sign(&json!({"sub": "alice"}));
    let r = post(
        s2.api,
        "/admin/login",
        &[("Origin", &o2)],
        &json!({"token": user_token}).to_string(),
    )
    .await;
    assert_eq!(r.status, 401);
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_session_cookie_and_logout() {
    let s = start(config()).await;
    let o = origin(s.api);
    let r = post(
        s.api,
        "/admin/login",
        &[("Origin", &o)],
        &json!({ "password": PASSWORD }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let set = r.header("set-cookie").unwrap().to_owned();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=43200",
    ] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(
        !set.contains("Secure"),
        "plain HTTP: no Secure, or the browser drops it: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let me = get(s.api, "/admin/api/session", Some(&cookie)).await;
    assert_eq!(me.status, 200);
    assert_eq!(json_of(&me)["user"], "password");
    // Behind a TLS-terminating proxy, the cookie is Secure.
    let r = post(
        s.api,
        "/admin/login",
        &[("Origin", &o), ("X-Forwarded-Proto", "https")],
        &json!({ "password": PASSWORD }).to_string(),
    )
    .await;
    assert!(r.header("set-cookie").unwrap().contains("; Secure"));
    // A token with "admin": true logs in as its subject.
    let token = sign(&json!({"sub": "ops-alice", "admin": true}));
    let r = post(
        s.api,
        "/admin/login",
        &[("Origin", &o)],
        &json!({ "token": token }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["user"], "ops-alice");
    // Logout ends the session on the server, not just in the browser.
    let r = post(
        s.api,
        "/admin/logout",
        &[("Origin", &o), ("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        get(s.api, "/admin/api/session", Some(&cookie)).await.status,
        401
    );
    // A made-up session id is nobody.
    let forged = format!("switchboard_admin={}", "ab".repeat(32));
    assert_eq!(
        get(s.api, "/admin/api/session", Some(&forged)).await.status,
        401
    );
}

#[tokio::test]
async fn posts_without_the_consoles_origin_are_refused() {
    let s = start(config()).await;
    let cookie = login(s.api).await;
    let body = json!({"channel": "news:x", "data": {"n": 1}}).to_string();
    for headers in [
        vec![("Cookie", cookie.as_str())],
        vec![
            ("Cookie", cookie.as_str()),
            ("Origin", "http://evil.example"),
        ],
        vec![("Cookie", cookie.as_str()), ("Origin", "null")],
    ] {
        let r = post(s.api, "/admin/api/action/publish", &headers, &body).await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.body);
    }
    // Nothing was published.
    let (_, h) = api_call_history(s.api, &cookie).await;
    assert_eq!(h["history"]["publications"], json!([]), "{h}");
    // Login is held to the rule too (login CSRF).
    let r = post(
        s.api,
        "/admin/login",
        &[("Origin", "http://evil.example")],
        &json!({ "password": PASSWORD }).to_string(),
    )
    .await;
    assert_eq!(r.status, 403);
    // No state change on GET.
    let r = get(s.api, "/admin/api/action/publish", Some(&cookie)).await;
    assert_eq!(r.status, 405);
    // Without a session, nothing either.
    let o = origin(s.api);
    let r = post(s.api, "/admin/api/action/publish", &[("Origin", &o)], &body).await;
    assert_eq!(r.status, 401);
    // A method the console does not offer.
    let r = post(
        s.api,
        "/admin/api/action/refresh",
        &[("Origin", &o), ("Cookie", &cookie)],
        r#"{"user":"a"}"#,
    )
    .await;
    assert_eq!(r.status, 404);
}

async fn api_call_history(api: SocketAddr, cookie: &str) -> (u16, Value) {
    let r = get(api, "/admin/api/channel?name=news:x", Some(cookie)).await;
    (r.status, json_of(&r))
}

#[tokio::test]
async fn actions_call_the_api_methods_and_reach_clients() {
    let config = config();
    let token = switchboard::generate::token(&config, "alice", None, &[], None).unwrap();
    let s = start(config).await;
    let cookie = login(s.api).await;
    let o = origin(s.api);
    let headers = [("Origin", o.as_str()), ("Cookie", cookie.as_str())];
    let mut c = JsonClient::connect_with(s.addr, json!({ "token": token })).await;
    c.call("subscribe", json!({"channel": "news:x"})).await;

    let r = post(
        s.api,
        "/admin/api/action/publish",
        &headers,
        &json!({"channel": "news:x", "data": {"text": "from the console"}}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["result"]["offset"], 1);
    let p = c.push("pub").await;
    assert_eq!(p["data"]["text"], "from the console");

    // The channel views see it: presence, and the publication in history.
    let list = get(s.api, "/admin/api/channels?prefix=news:", Some(&cookie)).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(
        json_of(&list)["channels"],
        json!([{"name": "news:x", "subscribers": 1}])
    );
    let (status, ch) = api_call_history(s.api, &cookie).await;
    assert_eq!(status, 200);
    assert_eq!(
        ch["history"]["publications"][0]["data"]["text"],
        "from the console"
    );
    let here: Vec<&Value> = ch["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .collect();
    assert_eq!(here.len(), 1);
    assert_eq!(here[0]["user"], "alice");

    // An API error comes back as the API answers it.
    let r = post(
        s.api,
        "/admin/api/action/publish",
        &headers,
        r#"{"channel":"news:x"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        json_of(&r)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("data"),
        "{}",
        r.body
    );

    let r = post(
        s.api,
        "/admin/api/action/history_remove",
        &headers,
        r#"{"channel":"news:x"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, ch) = api_call_history(s.api, &cookie).await;
    assert_eq!(ch["history"]["publications"], json!([]), "{ch}");

    let r = post(
        s.api,
        "/admin/api/action/disconnect",
        &headers,
        r#"{"user":"alice"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["result"]["clients"], 1);
    let (code, _) = c.disconnected().await;
    assert_eq!(code, Some(3503), "force disconnect");

    // Every action is in the live stream's audit list, with who did it.
    let tick = first_tick(s.api, &cookie).await;
    let audit = tick["audit"].as_array().unwrap();
    let methods: Vec<&str> = audit
        .iter()
        .map(|a| a["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        ["publish", "publish", "history_remove", "disconnect"]
    );
    assert!(audit.iter().all(|a| a["user"] == "password"));
    assert_eq!(audit[0]["outcome"], "ok");
    assert_ne!(audit[1]["outcome"], "ok");
}

/// Opens the live stream with `cookie`: its `hello` must come first; the first `tick` after it.
async fn first_tick(api: SocketAddr, cookie: &str) -> Value {
    let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let raw = format!("GET /admin/api/events HTTP/1.1\r\nHost: {api}\r\nCookie: {cookie}\r\n\r\n");
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(at) = text.find("event: tick\ndata: ") {
                let rest = &text[at + 18..];
                if let Some(end) = rest.find('\n') {
                    return serde_json::from_str::<Value>(&rest[..end]).unwrap();
                }
            }
        }
    };
    let tick = tokio::time::timeout(WAIT, read).await.expect("a tick");
    assert!(text.contains("text/event-stream"), "{text}");
    let hello = text.find("event: hello").expect("hello first");
    assert!(hello < text.find("event: tick").unwrap());
    tick
}

#[tokio::test]
async fn the_live_stream_counts_clients_by_transport() {
    let s = start(config()).await;
    let cookie = login(s.api).await;
    // Anonymous is off: connect with a token.
    let cfg = config();
    let token = switchboard::generate::token(&cfg, "bob", None, &[], None).unwrap();
    let _c = JsonClient::connect_with(s.addr, json!({ "token": token })).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let tick = first_tick(s.api, &cookie).await;
        let ws = tick["point"]["clients"]["websocket"]
            .as_f64()
            .unwrap_or(0.0);
        let upgrades = tick["point"]["requests"]["websocket"].is_number();
        if ws == 1.0 && upgrades {
            assert_eq!(tick["nodes"][0]["num_clients"], 1, "{tick}");
            // The node's own figures, as its console shares them with the others.
            let figures = &tick["nodes"][0]["figures"];
            if figures["clients"]["websocket"] != 1.0 {
                continue_until(deadline, &tick).await;
                continue;
            }
            assert!(figures["memory"].as_u64().unwrap() > 1 << 20, "{tick}");
            assert!(
                tick["point"]["memory"].as_u64().unwrap() > 1 << 20,
                "{tick}"
            );
            assert!(
                tick["cost"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["transport"] == "websocket")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw the client: {tick}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Without a session there is no stream.
    assert_eq!(get(s.api, "/admin/api/events", None).await.status, 401);
}

/// Fails once `deadline` passed; waits a little otherwise.
async fn continue_until(deadline: tokio::time::Instant, last: &Value) {
    assert!(
        tokio::time::Instant::now() < deadline,
        "never saw the figures: {last}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[test]
fn hashpassword_reads_stdin_and_prints_a_hash_that_verifies() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::process::BIN)
        .arg("hashpassword")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pass\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(
        switchboard::admin::auth::verify_password(hash.trim(), "s3cret pass"),
        "{hash}"
    );
    assert!(!switchboard::admin::auth::verify_password(
        hash.trim(),
        "s3cret pass\n"
    ));
}
