//! The `switchboard` binary as a child process: started with flags and environment, its listening
//! address read from its JSON log, stopped by signals.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Starts the binary and returns it with the address it logged.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--log-format", "json", "--api-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    cmd.env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn switchboard");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("switchboard exited before listening")
            .unwrap();
        if let Some(rest) = line.split("\"addr\":\"").nth(1) {
            break rest.split('"').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// Starts `serve` with the config file `file`, on a free port; the child and its address.
pub fn serve(file: &std::path::Path) -> (Child, SocketAddr) {
    let file = file.to_str().expect("a test's temporary path is UTF-8");
    spawn(&["serve", "--config", file, "--listen", "127.0.0.1:0"], &[])
}

/// A directory of this test process under the system's temporary directory (`switchboard-{name}-`
/// and the process id, so that runs at once do not meet), created if missing.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits up to 10 s for the child to exit; its exit code.
pub fn wait_exit(child: &mut Child) -> i32 {
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("switchboard did not exit");
}

/// Sends `signal` (`TERM`, `HUP`...) to the child. `STOP` returns only once the child is stopped.
pub fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} failed");
    if signal == "STOP" {
        switchboard_engine::testing::process::wait_stopped(child.id());
    }
}

pub fn sigterm(child: &Child) {
    signal(child, "TERM");
}
