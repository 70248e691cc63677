//! Throwaway NATS for tests: a `nats-server -js` on a free port of 127.0.0.1 (never the machine's
//! 4222), with its JetStream store in a temporary directory, killed when dropped. Tests of this
//! crate and of the server's several-node setup use it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server` with JetStream, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    /// The JetStream store (and the ports file that proves which process listens).
    store: tempfile::TempDir,
    child: Option<Child>,
    /// Stopped with SIGSTOP ([`NatsServer::pause`]).
    paused: bool,
    /// Started with `-js`.
    jetstream: bool,
    /// Extra lines of a configuration file (`-c`), written into the store.
    config: Option<String>,
}

/// The binary to run: `$NATS_SERVER`, else Debian's `/usr/sbin/nats-server` (not on every user's
/// `PATH`), else `nats-server` on the `PATH`.
fn binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| {
        if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server".into()
        } else {
            "nats-server".into()
        }
    })
}

fn temp_store() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temporary store for NATS: {e}"))
}

impl NatsServer {
    /// Starts one on a free port. Panics (a test helper) when `nats-server` is missing or does not
    /// come up within 10 s.
    pub fn start() -> Self {
        Self::start_with(true, None)
    }

    /// Starts one without JetStream: what an engine must refuse, clearly, at start.
    pub fn start_without_jetstream() -> Self {
        Self::start_with(false, None)
    }

    /// Starts one with JetStream and these lines of configuration file (authorization, `tls`, a
    /// `jetstream { domain: ... }` block): command-line flags (`-js`, port, store) still win.
    pub fn start_with_config(config: &str) -> Self {
        Self::start_with(true, Some(config.to_owned()))
    }

    fn start_with(jetstream: bool, config: Option<String>) -> Self {
        for _ in 0..5 {
            // Ask the OS for a free port, then give it to NATS. Another test may take the same port
            // in between: then this server fails to bind, and we try another port.
            let mut s = Self {
                port: free_port(),
                store: temp_store(),
                child: None,
                paused: false,
                jetstream,
                config: config.clone(),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("nats-server could not bind a free port in 5 tries");
    }

    /// Starts the process; false if it exited (port taken). Waits until it is *this* process that
    /// listens (its ports file names its pid).
    fn spawn(&mut self) -> bool {
        let store = self.store.path().to_string_lossy().into_owned();
        let config_file = self.config.as_ref().map(|text| {
            let path = self.store.path().join("nats.conf");
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path.to_string_lossy().into_owned()
        });
        let mut child = Command::new(binary())
            .args(config_file.iter().flat_map(|f| ["-c", f.as_str()]))
            .args(self.jetstream.then_some("-js"))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
                &store,
                "--ports_file_dir",
                &store,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install NATS (apt-get install nats-server; scripts/setup.sh does) or set NATS_SERVER",
                    binary()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports_file = |pid: u32| {
            std::fs::read_dir(self.store.path())
                .map(|dir| {
                    dir.flatten().any(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .ends_with(&format!("_{pid}.ports"))
                    })
                })
                .unwrap_or(false)
        };
        loop {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if ports_file(child.id())
                && TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nats-server did not answer on {} within 10 s", self.addr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its address as a URL for `[engine.nats] servers`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr())
    }

    /// Where JetStream keeps its files.
    pub fn store(&self) -> &Path {
        self.store.path()
    }

    /// Freezes it with SIGSTOP: connections stay open and nothing answers, as when the server
    /// hangs rather than dies. [`NatsServer::resume`] or drop undoes it.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// Lets a [`NatsServer::pause`]d server run again (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    /// Sends a signal with `kill(1)` (no `unsafe` here). Panics when it cannot: a test that pauses
    /// the server must not go on believing it did.
    fn signal(&self, which: &str) {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("nats-server on port {} is not running", self.port));
        let status = Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill {which} {pid}: {e}"));
        assert!(status.success(), "kill {which} {pid} failed: {status}");
    }

    /// Kills it with SIGKILL, as a crash would: no clean shutdown, its store left as it was.
    pub fn kill(&mut self) {
        if self.paused {
            self.resume();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the store it had.
    pub fn start_again(&mut self) {
        self.kill();
        // Its old ports file would prove nothing about the new process; the pid differs anyway.
        assert!(
            self.spawn(),
            "nats-server could not bind port {} again",
            self.port
        );
    }

    /// Kills it and starts it again on the same port with an empty store: every stream is lost,
    /// as when JetStream forgets a stream after a crash.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.store = temp_store();
        assert!(
            self.spawn(),
            "nats-server could not bind port {} again",
            self.port
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
