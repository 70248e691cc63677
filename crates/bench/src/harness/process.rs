//! Processes of a benchmark: servers started pinned to the server core ([`start_pinned`]), load
//! generators started pinned to the client core with their JSON report on stdout
//! ([`start_client`]), free ports, and the first line a command prints (versions, dates).

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{Instant, sleep, timeout};

/// Raises the open-file limit to the hard limit, pins to the CPU given as `$1`, runs the rest.
const PINNED: &str =
    r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; cpu=$1; shift; exec taskset -c "$cpu" "$@""#;
/// The server's core.
pub const SERVER_CPU: &str = "0";
/// The load generator's core.
const CLIENT_CPU: &str = "1";
/// How long a server may take to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A running server process.
pub struct Running {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Running {
    /// Fails if the server died during the test (a crash would otherwise look like a slow run).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "server exited with {status} during the test; see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A load-generator child process and its stdout.
pub struct LoadChild {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl LoadChild {
    /// Reads the one JSON report line the client prints.
    pub async fn report<T: DeserializeOwned>(&mut self, limit: Duration) -> Result<T> {
        match timeout(limit, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                serde_json::from_str(&line).with_context(|| format!("bad report `{line}`"))
            }
            Ok(Ok(None)) => {
                let status = self.child.wait().await?;
                bail!("load generator exited with {status} without a report")
            }
            Ok(Err(e)) => Err(e).context("reading the load generator's output"),
            Err(_) => bail!("no report from the load generator within {limit:?}"),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Starts `argv` pinned to the server core, logging to `log`, and waits until it accepts
/// connections on `addr`.
pub async fn start_pinned(
    name: &str,
    argv: &[OsString],
    addr: SocketAddr,
    log: PathBuf,
) -> Result<Running> {
    start_pinned_on(SERVER_CPU, name, argv, addr, log).await
}

/// [`start_pinned`] on the CPUs `cpus` (a `taskset -c` list such as `0` or `0,1`) instead of the
/// server core alone.
pub async fn start_pinned_on(
    cpus: &str,
    name: &str,
    argv: &[OsString],
    addr: SocketAddr,
    log: PathBuf,
) -> Result<Running> {
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = pinned(cpus, argv)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let pid = child.id().context("server has no pid")?;
    let deadline = Instant::now() + START_TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited with {status} before listening; see {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            bail!(
                "{name} not accepting on {addr} after {START_TIMEOUT:?}; see {}",
                log.display()
            );
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(Running {
        child,
        pid,
        addr,
        log,
    })
}

/// Starts `self_exe ARGS` (a load-generator subcommand) pinned to the client core, its stdout
/// piped for the report.
pub fn start_client(self_exe: &Path, args: Vec<String>) -> Result<LoadChild> {
    let mut argv: Vec<OsString> = vec![self_exe.into()];
    argv.extend(args.into_iter().map(OsString::from));
    let mut child = pinned(CLIENT_CPU, &argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the load generator")?;
    let stdout = child.stdout.take().context("no stdout")?;
    Ok(LoadChild {
        child,
        lines: BufReader::new(stdout).lines(),
    })
}

/// A command that raises the open-file limit, pins to `cpu` (a `taskset -c` list) and execs
/// `argv`.
fn pinned(cpu: &str, argv: &[OsString]) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(PINNED)
        .arg("sh")
        .arg(cpu)
        .args(argv)
        .kill_on_drop(true);
    command
}

/// A free port on 127.0.0.1 (bound to port 0, then released).
pub fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The first line `program args` prints on stdout, if it runs and prints one.
pub fn stdout_line(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    text_line(output.stdout)
}

/// The first line of a command's output (stdout, else stderr: `nginx -v` writes there).
pub fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    String::from_utf8(text)
        .ok()?
        .lines()
        .next()
        .map(str::to_string)
}

/// The first non-empty line of `text`, if it is UTF-8.
fn text_line(text: Vec<u8>) -> Option<String> {
    String::from_utf8(text)
        .ok()?
        .lines()
        .next()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
}
