//! Throwaway server processes for tests: a free port of 127.0.0.1 (never a machine's own server's),
//! a process started on it and waited for until it is *this* process that listens there (not
//! another test's server that took the port in between), paused and resumed with signals, and
//! killed when dropped. The Redis and NATS engines' `testing` modules build their servers on it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many free ports a server is tried on before giving up (see [`on_a_free_port`]).
const TRIES: usize = 5;

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether something accepts connections at `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The program to run: the environment variable `var` when set, else the first of `candidates`
/// that is a file, else `name` (found on the `PATH`).
pub fn binary(var: &str, candidates: &[&str], name: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        candidates
            .iter()
            .find(|c| Path::new(c).is_file())
            .map_or_else(|| name.to_owned(), |c| (*c).to_owned())
    })
}

/// Gets a server up on a free port: `start` is given one and answers `None` when the server could
/// not bind it (another test took it between asking and binding); then another port is tried. Panics
/// naming `what` after a few tries.
pub fn on_a_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Option<T>) -> T {
    for _ in 0..TRIES {
        if let Some(server) = start(free_port()) {
            return server;
        }
    }
    panic!("{what} could not bind a free port in {TRIES} tries");
}

/// A running server process, killed (resumed first if paused) when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Stopped with SIGSTOP ([`Process::pause`]).
    paused: bool,
}

impl Process {
    /// Starts `command` (no standard input or output) and waits until `listening` says, given its
    /// process id, that this process serves. `None` when the process exited first (its port was
    /// taken). Panics (a test helper) when the program cannot be run, telling `install`, or when
    /// `what` does not listen within [`START_TIMEOUT`].
    pub fn spawn(
        mut command: Command,
        what: &str,
        install: &str,
        mut listening: impl FnMut(u32) -> bool,
    ) -> Option<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): {install}",
                    command.get_program().to_string_lossy()
                )
            });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return None;
            }
            if listening(child.id()) {
                return Some(Self {
                    child,
                    paused: false,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not answer within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Freezes it with SIGSTOP: connections stay open and nothing answers, as when a server hangs
    /// (a long fork, swapping, a stalled VM) rather than dies. [`Process::resume`] or drop undoes it.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        wait_stopped(self.id());
        self.paused = true;
    }

    /// Lets a paused process run again (SIGCONT): what it received meanwhile is then processed.
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    /// Sends a signal with `kill(1)` (no `unsafe` here). Panics when it cannot: a test that pauses
    /// a server must not go on believing it did.
    fn signal(&self, which: &str) {
        let pid = self.id();
        let status = Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill {which} {pid}: {e}"));
        assert!(status.success(), "kill {which} {pid} failed: {status}");
    }
}

impl Drop for Process {
    /// SIGKILL, as a crash would, and waits until it is gone (its port free).
    fn drop(&mut self) {
        if self.paused {
            // A stopped process dies of SIGKILL too, but let it go cleanly.
            self.resume();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server's place: a port of 127.0.0.1 of its own, and the process serving there while one does,
/// which a test pauses, stops, and starts again at the same address. What `RedisServer` and
/// `NatsServer` are built on: they say how to start the process, this keeps it.
#[derive(Debug)]
pub struct Served {
    /// The program, for messages ("redis-server").
    name: &'static str,
    port: u16,
    process: Option<Process>,
}

impl Served {
    /// `name`'s place at `port`, nothing running yet.
    pub fn new(name: &'static str, port: u16) -> Self {
        Self {
            name,
            port,
            process: None,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    /// What to say of it: "redis-server on 127.0.0.1:1234".
    pub fn describe(&self) -> String {
        format!("{} on {}", self.name, self.addr())
    }

    /// Whether a process serves here now.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Keeps `process` (what [`Process::spawn`] gave) as the one serving here; whether there is one.
    pub fn run(&mut self, process: Option<Process>) -> bool {
        self.process = process;
        self.is_running()
    }

    /// [`Served::run`] of a process started again after [`Served::stop`]: panics when there is
    /// none (the port was taken meanwhile), since the test needs the same address.
    pub fn run_again(&mut self, process: Option<Process>) {
        assert!(
            self.run(process),
            "{} could not bind port {} again",
            self.name,
            self.port
        );
    }

    /// The process, or a panic: a test that pauses a server must not go on believing it did.
    fn running(&mut self) -> &mut Process {
        let what = self.describe();
        self.process
            .as_mut()
            .unwrap_or_else(|| panic!("{what} is not running"))
    }

    /// Freezes it ([`Process::pause`]).
    pub fn pause(&mut self) {
        self.running().pause();
    }

    /// Lets it run again ([`Process::resume`]).
    pub fn resume(&mut self) {
        self.running().resume();
    }

    /// Kills it (SIGKILL, as a crash would) and waits until the port is free.
    pub fn stop(&mut self) {
        self.process = None;
    }
}

/// Waits until every thread of process `pid` is stopped.
///
/// `kill(2)` returns once SIGSTOP is queued, not once the process stopped: the kernel wakes one
/// thread, which stops the others when it runs. Until then the others go on, and on a loaded
/// machine a Tokio worker of a "hung" node was seen reading the next relayed request and answering
/// it (200) milliseconds after `kill -STOP` had returned, failing a test that expects no answer.
pub fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if all_threads_stopped(pid) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not stop within 10 s of SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether no thread of `pid` can run: each is stopped (`T`, `t`) or exiting (`Z`, `X`), as its
/// `/proc/<pid>/task/<tid>/stat` says (the state follows the command name's closing parenthesis).
fn all_threads_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("cannot list the threads of process {pid}: {e}"));
    tasks.flatten().all(|task| {
        // A thread that exited since the listing cannot run either.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return true;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        matches!(state, Some('T' | 't' | 'Z' | 'X'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_waited_for_and_killed_when_dropped() {
        let mut polls = 0;
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let p = Process::spawn(sleep, "sleep", "", |_| {
            polls += 1;
            polls > 2
        });
        let Some(mut p) = p else {
            panic!("sleep exited")
        };
        assert_eq!(polls, 3, "asked until it said yes");
        p.pause();
        let pid = p.id().to_string();
        drop(p);
        // Killed and reaped: no process of that id is left to signal.
        let alive = Command::new("kill").args(["-0", &pid]).status();
        assert!(alive.is_ok_and(|s| !s.success()), "{pid} still runs");
    }

    #[test]
    fn a_process_that_exits_at_once_did_not_bind() {
        let p = Process::spawn(Command::new("true"), "true", "", |_| false);
        assert!(p.is_none());
    }

    #[test]
    fn free_ports_are_tried_until_one_works() {
        let mut tried = Vec::new();
        let port = on_a_free_port("a server", |port| {
            tried.push(port);
            (tried.len() == 3).then_some(port)
        });
        assert_eq!(tried.len(), 3);
        assert_eq!(tried.last(), Some(&port));
        let listener = TcpListener::bind(local(0));
        let addr = listener.and_then(|l| l.local_addr().map(|a| (l, a)));
        let Ok((listener, addr)) = addr else {
            panic!("no listener")
        };
        assert!(accepts(addr));
        drop(listener);
        assert_eq!(
            binary("SWITCHBOARD_NO_SUCH_VAR", &["/nonexistent/x"], "x"),
            "x"
        );
    }
}
