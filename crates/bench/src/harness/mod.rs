//! What the orchestrators of `run` (echo), `fanout` (both engines) and `transports` share:
//!
//! - [`process`]: servers and load generators started pinned to their cores, free ports, the
//!   first line a command prints;
//! - [`child`]: running the load generator as a child process and parsing its JSON report;
//! - [`rounds`]: every round in a rotated order, and a noisy run repeated with the quietest kept;
//! - [`markdown`]: medians, number formats, the machine and the command line of the reports;
//! - here: finding the switchboard binary, its command line, and telling versions.

pub mod child;
pub mod markdown;
pub mod process;
pub mod rounds;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

pub use process::first_line;

/// The switchboard binary: `arg` (`--switchboard`), else `switchboard` next to this executable
/// (`self_exe`); fails when there is none.
pub fn switchboard_binary(arg: Option<&Path>, self_exe: &Path) -> Result<PathBuf> {
    let switchboard = match arg {
        Some(path) => path.to_path_buf(),
        None => self_exe
            .parent()
            .map(|dir| dir.join("switchboard"))
            .context("no directory of this executable")?,
    };
    ensure!(
        switchboard.is_file(),
        "no switchboard binary at {} (build it or pass --switchboard PATH)",
        switchboard.display()
    );
    Ok(switchboard)
}

/// The command line of `switchboard serve` on `listen` with the configuration `toml`, which it
/// writes to `config` first.
pub fn switchboard_serve(
    binary: &Path,
    config: &Path,
    toml: &str,
    listen: SocketAddr,
) -> Result<Vec<OsString>> {
    std::fs::write(config, toml).with_context(|| format!("writing {}", config.display()))?;
    Ok(vec![
        binary.into(),
        "serve".into(),
        "--config".into(),
        config.into(),
        "--listen".into(),
        listen.to_string().into(),
    ])
}

/// What a built binary is, for the reports: its `--version`, its path and when it was built.
pub fn built_version(binary: &Path) -> String {
    let path = binary.display().to_string();
    format!(
        "{} ({path}, built {})",
        first_line(&path, &["--version"]).unwrap_or_default(),
        first_line("date", &["-u", "-r", &path, "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default()
    )
}

/// The names of `items`, comma-separated (for the lines saying what a run will do).
pub fn names<'a, T: 'a>(
    items: impl IntoIterator<Item = &'a T>,
    name: impl Fn(&'a T) -> &'a str,
) -> String {
    items.into_iter().map(name).collect::<Vec<_>>().join(", ")
}
