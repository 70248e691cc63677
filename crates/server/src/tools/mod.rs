//! The client-side subcommands, `switchboard subscribe` and `switchboard publish`: small tools for
//! scripts and for trying a server out, built on `switchboard-client` and the server API.
//!
//! Both print data on stdout and progress on stderr, and exit with 0 when all went well, 1 on a
//! usage, configuration or connection problem, and 2 when the server refused (its error is printed).

mod publish;
mod subscribe;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

pub use publish::publish;
pub use subscribe::subscribe;

use crate::Config;
use crate::cli::ClientArgs;

/// Why a client subcommand failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Bad flags or input, a configuration that does not load, or a server that cannot be reached.
    #[error("{0}")]
    Usage(String),
    /// The server refused: the message carries its error.
    #[error("{0}")]
    Refused(String),
}

impl ToolError {
    /// The process exit code: 1 for usage, 2 for a refusal.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 1,
            Self::Refused(_) => 2,
        }
    }

    /// Sorts a client error: the server's answers are refusals, the rest is ours to fix.
    fn from_client(context: &str, e: switchboard_client::Error) -> Self {
        match e {
            switchboard_client::Error::Server(e) => Self::Refused(format!("{context}: {e}")),
            e => Self::Usage(format!("{context}: {e}")),
        }
    }
}

/// Builds the async runtime `builder` describes, with every driver on (network, timers, signals);
/// when the machine refuses (no threads or file descriptors left), says so on standard error and
/// gives the exit code to leave with, as no log exists yet to say it.
pub fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("switchboard: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Runs a subcommand on a single-threaded runtime and turns its outcome into the exit code.
pub fn run(task: impl Future<Output = Result<(), ToolError>>) -> ExitCode {
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The configuration, for defaults that no flag gave.
fn config(file: Option<&Path>) -> Result<Config, ToolError> {
    Config::load(file, &figment::Figment::new()).map_err(|e| {
        ToolError::Usage(format!(
            "{e} (the configuration gives the defaults of --url, --api and --api-key)"
        ))
    })
}

/// The address a client on this machine reaches a listener on.
fn reachable(addr: SocketAddr) -> SocketAddr {
    // A server listening on every interface (0.0.0.0 or ::) is reached through loopback.
    if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    }
}

/// A WebSocket client from `--url`/`--token` (or the configuration), not yet connected.
fn client(args: &ClientArgs) -> Result<(switchboard_client::Client, String), ToolError> {
    let (builder, url) = client_builder(args)?;
    let client = builder
        .build()
        .map_err(|e| ToolError::Usage(e.to_string()))?;
    Ok((client, url))
}

/// The builder of [`client`], for a caller that sets more.
fn client_builder(
    args: &ClientArgs,
) -> Result<(switchboard_client::ClientBuilder, String), ToolError> {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            let c = config(args.config.as_deref())?;
            format!("ws://{}{}", reachable(c.listen.0), c.websocket_path)
        }
    };
    let mut builder = switchboard_client::Client::builder(url.as_str())
        .name("switchboard-cli")
        .version(env!("CARGO_PKG_VERSION"));
    if let Some(token) = &args.token {
        builder = builder.token(token.as_str());
    }
    Ok((builder, url))
}

/// Installs SIGINT and SIGTERM handlers now, and returns a future that resolves on either (never,
/// if they cannot be installed). Installing early matters: a signal that comes before the handlers
/// would kill the process instead of ending the command cleanly.
fn interrupted() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        match handlers {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_runtime_has_its_timers_and_network_on() {
        let rt = runtime(tokio::runtime::Builder::new_current_thread()).expect("a runtime");
        // Without enable_all, a timer or a socket panics: "timers are disabled", "IO is disabled".
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            assert!(listener.local_addr().is_ok());
        });
    }
}
