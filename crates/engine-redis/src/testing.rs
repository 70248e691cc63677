//! A throwaway `redis-server` for tests: on a free port of 127.0.0.1 (never the machine's 6379),
//! without persistence, stopped when dropped. Tests of this crate and of the server's several-node
//! setup use it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

/// The binary to run: `$REDIS_SERVER`, else `redis-server` on the `PATH`.
fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl RedisServer {
    /// Starts one on a free port. Panics (a test helper) when `redis-server` is missing or does not
    /// come up within 10 s.
    pub fn start() -> Self {
        for _ in 0..5 {
            // Ask the OS for a free port, then give it to Redis. Another test may take the same port
            // in between: then this Redis fails to bind, and we try another port.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_else(|e| panic!("no free port: {e}"));
            let mut s = Self { port, child: None };
            if s.spawn() {
                return s;
            }
        }
        panic!("redis-server could not bind a free port in 5 tries");
    }

    /// Starts one on `port` (to bring a stopped server back at the same address).
    pub fn start_on(port: u16) -> Self {
        let mut s = Self { port, child: None };
        assert!(s.spawn(), "redis-server could not bind port {port}");
        s
    }

    /// Starts the process; false if it exited (port taken). Waits until it is *this* process that
    /// answers on the port, not another test's Redis.
    fn spawn(&mut self) -> bool {
        let mut child = Command::new(binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install Redis (apt-get install redis-server; scripts/setup.sh does) or set REDIS_SERVER",
                    binary()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if pid_on(self.addr()) == Some(child.id()) {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not answer on {} within 10 s", self.addr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its address as a URL for `[engine.redis] addresses`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// Kills it (its data is gone: no persistence) and waits until the port is free.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server could not bind port {} again",
            self.port
        );
    }
}

/// The process id of the Redis answering on `addr` (`INFO server`), if one does.
fn pid_on(addr: SocketAddr) -> Option<u32> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut text = Vec::new();
    let mut buf = [0_u8; 4096];
    while text.len() < 1 << 16 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
        let s = String::from_utf8_lossy(&text);
        if let Some(rest) = s.split("process_id:").nth(1)
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            return pid.trim().parse().ok();
        }
    }
    None
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
