//! The `switchboard` binary as a user runs it: flags, environment, config file, `checkconfig`, and
//! SIGTERM ending in close 1001 and a clean exit.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::process::*;
use common::*;

#[tokio::test]
async fn no_subcommand_serves_and_sigterm_closes_clients_with_1001() {
    let (mut child, addr) = spawn(&["--listen", "127.0.0.1:0", "--echo"], &[]);
    let mut c = connect(addr).await;
    c.echo_ok("through the real binary").await;
    sigterm(&child);
    let close = c.read_frame().await.unwrap();
    assert_eq!(close.close_code(), Some(1001));
    c.send_frame(true, false, 8, &1001u16.to_be_bytes(), true)
        .await;
    assert!(c.read_frame().await.is_none());
    assert_eq!(wait_exit(&mut child), 0);
}

#[tokio::test]
async fn environment_and_file_with_flags_on_top() {
    let dir = temp_dir("cli");
    let file = dir.join("switchboard.toml");
    // The file asks for a port that is taken by nobody we know; the flag overrides it with port 0.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\n[echo]\nenabled = true\npath = \"/from-file\"\n",
    )
    .unwrap();
    let (mut child, addr) = spawn(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("SWITCHBOARD_WEBSOCKET__SUBPROTOCOLS", "[chat]")],
    );
    let (mut c, r) = handshake(addr, "/from-file", &[("Sec-WebSocket-Protocol", "chat")]).await;
    assert_eq!(
        (r.status, r.header("sec-websocket-protocol")),
        (101, Some("chat"))
    );
    c.echo_ok("configured by file, environment and flag").await;
    sigterm(&child);
    assert_eq!(wait_exit(&mut child), 0);

    // Environment alone.
    let (mut child, addr) = spawn(
        &[],
        &[
            ("SWITCHBOARD_LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_ECHO__ENABLED", "true"),
        ],
    );
    connect(addr)
        .await
        .echo_ok("configured by environment")
        .await;
    sigterm(&child);
    assert_eq!(wait_exit(&mut child), 0);
}

/// Runs the binary to completion: its exit code, stdout and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn bad_configuration_is_refused_with_the_key_name() {
    let dir = temp_dir("badcfg");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[websocket]\nmax_mesage_size = 10\n").unwrap();
    let (code, _, err) = run(&["checkconfig", bad.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("max_mesage_size"), "{err}");

    let good = dir.join("good.toml");
    std::fs::write(&good, "[websocket]\nmax_message_size = 10\n").unwrap();
    let (code, _, err) = run(&["checkconfig", good.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");

    let (code, _, err) = run(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("SWITCHBOARD_WEBSOCKET__PING_INTERVAL", "often")],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.to_lowercase().contains("websocket.ping_interval"),
        "{err}"
    );
}

/// A `SWITCHBOARD_` variable that names no setting (another program's, like the JS tests'
/// `SWITCHBOARD_BIN`) is ignored with a warning naming it; the same unknown key in a file still stops.
#[test]
fn unknown_environment_variables_are_ignored_with_a_warning() {
    let dir = temp_dir("unknown-env");
    let good = dir.join("good.toml");
    std::fs::write(&good, "[websocket]\nmax_message_size = 10\n").unwrap();
    let env = [
        ("SWITCHBOARD_BIN", "/usr/local/bin/switchboard"),
        ("SWITCHBOARD_WEBSOCKET__PING_INTERVALL", "5s"),
        ("SWITCHBOARD_WEBSOCKET__PING_INTERVAL", "7s"),
    ];
    let (code, _, err) = run(&["checkconfig", good.to_str().unwrap()], &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("SWITCHBOARD_BIN"), "{err}");
    assert!(
        err.contains("SWITCHBOARD_WEBSOCKET__PING_INTERVALL"),
        "{err}"
    );
    assert!(
        !err.contains("SWITCHBOARD_WEBSOCKET__PING_INTERVAL "),
        "{err}"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "bin = \"x\"\n").unwrap();
    let (code, _, err) = run(&["checkconfig", bad.to_str().unwrap()], &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bin"), "{err}");

    // The server starts (spawn waits for its listening line) and still takes the known variables.
    let (mut child, _) = spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("SWITCHBOARD_BIN", "/usr/local/bin/switchboard")],
    );
    sigterm(&child);
    assert_eq!(wait_exit(&mut child), 0);
}

#[tokio::test]
async fn genconfig_and_gentoken_give_a_working_setup() {
    let dir = temp_dir("gen");
    let file = dir.join("generated.toml");
    let (code, config, _) = run(&["genconfig"], &[]);
    assert_eq!(code, Some(0));
    std::fs::write(&file, config).unwrap();
    let path = file.to_str().unwrap();
    let (code, _, err) = run(&["checkconfig", path], &[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, token, err) = run(
        &[
            "gentoken", "--config", path, "--user", "alice", "--ttl", "10m",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let token = token.trim().to_owned();
    let (mut child, addr) = serve(&file);
    let (mut c, _) = handshake(addr, "/connection/websocket", &[]).await;
    c.send_text(&format!(r#"{{"id":1,"connect":{{"token":"{token}"}}}}"#))
        .await;
    let reply = c.read_frame().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["connect"]["expires"], true, "{v}");
    sigterm(&child);
    assert_eq!(wait_exit(&mut child), 0);
}

#[tokio::test]
async fn demo_without_an_api_key_prints_a_generated_one_and_a_working_curl_line() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(BIN)
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0", "--log-format", "json"])
        .env_remove("SWITCHBOARD_API__KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.split("\"addr\":\"").nth(1) {
                let _ = tx.send(rest.split('"').next().unwrap().to_owned());
            }
        }
    });
    let addr: std::net::SocketAddr = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap()
        .parse()
        .unwrap();
    // Standard output: the key, and the command that ends with its last line.
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    loop {
        let line = stdout.next().expect("a curl line on stdout").unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.trim_start().starts_with("-d ") {
            break;
        }
    }
    assert!(banner.contains("generated"), "{banner}");
    assert!(banner.contains(&format!("http://{addr}/")), "{banner}");
    let command = &banner[banner.find("curl ").unwrap()..];
    let mut watcher = JsonClient::connected(addr).await;
    watcher
        .ok("subscribe", serde_json::json!({"channel": "chat:lobby"}))
        .await;
    // Pasted into a shell as printed.
    let out = tokio::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("\"result\""), "{command}\n{answer}");
    let publication = watcher.push("pub").await;
    assert_eq!(publication["data"]["type"], "msg", "{publication}");
    assert_eq!(publication["data"]["text"], "hello from the backend");
    sigterm(&child);
    assert_eq!(wait_exit(&mut child), 0);
}
