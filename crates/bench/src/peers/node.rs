//! The Node `ws` peer: installs the npm package from its lock file when needed, then replaces
//! this process with `node echo.js` (so the process id the orchestrator measures is Node's).

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// This crate's `peers/node-ws` folder.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join("node-ws")
}

/// Runs `npm ci --prefix DIR` unless `DIR/node_modules/ws` exists. npm's chatter goes to stderr
/// so it never mixes with a report on stdout.
pub fn ensure_installed(dir: &Path) -> Result<()> {
    ensure_package(dir, "ws")
}

/// Runs `npm ci --prefix DIR` unless `DIR/node_modules/PACKAGE` exists.
pub fn ensure_package(dir: &Path, package: &str) -> Result<()> {
    // npm mistakes a path through a symlink for a linked package: give it the real one.
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("no Node peer folder at {}", dir.display()))?;
    if dir.join("node_modules").join(package).is_dir() {
        return Ok(());
    }
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = Command::new("npm")
        .arg("ci")
        .arg("--no-audit")
        .arg("--no-fund")
        .arg("--prefix")
        .arg(dir)
        .stdout(Stdio::from(stderr))
        .status()
        .context("running npm (is Node.js installed?)")?;
    ensure!(
        status.success(),
        "`npm ci --prefix {}` failed: {status}",
        dir.display()
    );
    Ok(())
}

/// Installs the package if needed and execs Node; only returns on failure.
pub fn exec(listen: SocketAddr, dir: &Path) -> Result<()> {
    ensure_installed(dir)?;
    let err = Command::new("node")
        .arg(dir.join("echo.js"))
        .arg("--listen")
        .arg(listen.to_string())
        .exec();
    Err(err).context("starting node")
}
