//! Throwaway NATS for tests: a `nats-server -js` on a free port of 127.0.0.1 (never the machine's
//! 4222), with its JetStream store in a temporary directory, killed when dropped. Tests of this
//! crate and of the server's several-node setup use it. The process plumbing (free ports, waiting,
//! signals) is `switchboard_engine::testing::process`, shared with the Redis engine's.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use switchboard_engine::conformance::Server;
use switchboard_engine::testing::process::{self, Process, Served, on_a_free_port};

pub use switchboard_engine::testing::process::free_port;

use crate::NatsConfig;

/// An engine's configuration on `servers` as tests want it: timeouts of seconds, so that a server
/// that is missing or away fails a test quickly, and presence that expires a second after its node
/// stops. A test changes the fields its check is about (`NatsConfig { prefix: .., ..config(s) }`).
pub fn config(servers: Vec<String>) -> NatsConfig {
    NatsConfig {
        servers,
        prefix: "test".into(),
        presence_ttl: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
    }
}

/// A running `nats-server` with JetStream, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    /// Its port, and its process while it runs.
    served: Served,
    /// The JetStream store (and the ports file that proves which process listens).
    store: tempfile::TempDir,
    /// Started with `-js`.
    jetstream: bool,
    /// Extra lines of a configuration file (`-c`), written into the store.
    config: Option<String>,
}

/// The binary to run: `$NATS_SERVER`, else Debian's `/usr/sbin/nats-server` (not on every user's
/// `PATH`), else `nats-server` on the `PATH`.
fn binary() -> String {
    process::binary("NATS_SERVER", &["/usr/sbin/nats-server"], "nats-server")
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
        on_a_free_port("nats-server", |port| {
            let mut s = Self {
                served: Served::new("nats-server", port),
                store: temp_store(),
                jetstream,
                config: config.clone(),
            };
            let process = s.spawn();
            s.served.run(process).then_some(s)
        })
    }

    /// Starts the process; `None` if it exited (port taken). Waits until it is *this* process that
    /// listens (its ports file names its pid).
    fn spawn(&self) -> Option<Process> {
        let store = self.store.path().to_string_lossy().into_owned();
        let config_file = self.config.as_ref().map(|text| {
            let path = self.store.path().join("nats.conf");
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path.to_string_lossy().into_owned()
        });
        let mut command = Command::new(binary());
        command
            .args(config_file.iter().flat_map(|f| ["-c", f.as_str()]))
            .args(self.jetstream.then_some("-js"))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.served.port().to_string(),
                "-sd",
                &store,
                "--ports_file_dir",
                &store,
            ]);
        let (addr, dir) = (self.addr(), self.store.path());
        Process::spawn(
            command,
            &self.served.describe(),
            "install NATS (apt-get install nats-server; scripts/setup.sh does) or set NATS_SERVER",
            |pid| ports_file(dir, pid) && process::accepts(addr),
        )
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
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
        self.served.pause();
    }

    /// Lets a [`NatsServer::pause`]d server run again (SIGCONT).
    pub fn resume(&mut self) {
        self.served.resume();
    }

    /// Kills it with SIGKILL, as a crash would: no clean shutdown, its store left as it was.
    pub fn kill(&mut self) {
        self.served.stop();
    }

    /// Starts it again on the same port, with the store it had.
    pub fn start_again(&mut self) {
        self.kill();
        // Its old ports file would prove nothing about the new process; the pid differs anyway.
        let process = self.spawn();
        self.served.run_again(process);
    }

    /// Kills it and starts it again on the same port with an empty store: every stream is lost,
    /// as when JetStream forgets a stream after a crash.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.store = temp_store();
        let process = self.spawn();
        self.served.run_again(process);
    }
}

impl Server for NatsServer {
    fn url(&self) -> String {
        NatsServer::url(self)
    }

    fn restart_empty(&mut self) {
        NatsServer::restart_empty(self);
    }
}

/// Whether the server of process `pid` wrote its ports file into `dir`: it listens.
fn ports_file(dir: &Path, pid: u32) -> bool {
    let suffix = format!("_{pid}.ports");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        })
        .unwrap_or(false)
}
