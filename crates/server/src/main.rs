//! The `switchboard` binary: parses the command line and runs the server. All logic lives in the
//! library so that tests start the same server in-process.

use std::process::ExitCode;

use clap::Parser;
use switchboard::cli::{Cli, Command, ServeArgs};
use switchboard::{Config, Server, generate, logging, tools};
use tokio::signal::unix::{Signal, SignalKind, signal};

// The allocator is chosen at build time (docs/benchmarks.md, "Allocator", has the measurements).
#[cfg(all(feature = "jemalloc", feature = "mimalloc"))]
compile_error!("features `jemalloc` and `mimalloc` both choose the global allocator: enable one");

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version end here too, on stdout and with 0; a usage error exits with 1
            // (2 means the server refused, for the client subcommands).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Some(Command::Subscribe(args)) => tools::run(tools::subscribe(args)),
        Some(Command::Publish(args)) => tools::run(tools::publish(args)),
        Some(Command::Serve(args)) => serve(&args),
        None => serve(&cli.serve),
        Some(Command::Genconfig) => match generate::config() {
            Ok(generated) => {
                print!("{}", generated.text);
                eprintln!(
                    "switchboard: the console password (shown only now; the file holds its hash): {}",
                    generated.admin_password
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Some(Command::Hashpassword) => {
            let mut line = String::new();
            match std::io::stdin().read_line(&mut line) {
                Ok(_) => {}
                Err(e) => return fail(&e),
            }
            let password = line.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return fail(&"hashpassword reads the password from stdin: got an empty line");
            }
            match switchboard::admin::auth::hash_password(password) {
                Ok(hash) => {
                    println!("{hash}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Some(Command::Gentoken {
            user,
            ttl,
            channels,
            info,
            config,
        }) => {
            let made = Config::load(config.as_deref(), &figment::Figment::new())
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    generate::token(&c, &user, ttl, &channels, info.as_deref())
                        .map_err(|e| e.to_string())
                });
            match made {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Some(Command::Checkconfig { file }) => {
            match Config::load(Some(&file), &figment::Figment::new()) {
                Ok(_) => {
                    println!("{}: OK", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let (config, warnings) =
        match Config::load_with_warnings(args.config.as_deref(), &args.overrides()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("switchboard: {e}");
                return ExitCode::FAILURE;
            }
        };
    if let Err(e) = logging::init(&config.log) {
        eprintln!("switchboard: {e}");
        return ExitCode::FAILURE;
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tools::runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let signals = Signals::install();
        tracing::info!(addr = %server.local_addr(), api = %server.api_addr(), version = env!("CARGO_PKG_VERSION"), "switchboard listening");
        if let Some(banner) = server.demo_banner() {
            // On standard output, apart from the log, so that the curl line can be pasted as it is.
            println!("{banner}");
        }
        let handle = server.shutdown_handle();
        tokio::spawn(async move {
            stopped(signals.stop).await;
            handle.shutdown();
        });
        tokio::spawn(reload_on_sighup(signals.hup, server.tls()));
        server.run().await;
        ExitCode::SUCCESS
    })
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("switchboard: {e}");
    ExitCode::FAILURE
}

/// The signals the server acts on, installed before it says it is listening: a SIGTERM that comes
/// right after the "listening" line must stop it gracefully, not kill it with the default action.
struct Signals {
    stop: Option<(Signal, Signal)>,
    hup: Option<Signal>,
}

impl Signals {
    fn install() -> Self {
        let stop = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Some((int, term)),
            _ => {
                tracing::warn!("cannot install SIGINT/SIGTERM handlers; stop with SIGKILL");
                None
            }
        };
        let hup = signal(SignalKind::hangup()).ok();
        if hup.is_none() {
            tracing::warn!(
                "cannot install the SIGHUP handler; certificates reload only on restart"
            );
        }
        Self { stop, hup }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stopped(stop: Option<(Signal, Signal)>) {
    let Some((mut int, mut term)) = stop else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// On every SIGHUP, reloads the TLS certificate (connections already open keep theirs). Handling it
/// also keeps SIGHUP from killing the process, its default action.
async fn reload_on_sighup(hup: Option<Signal>, tls: Option<switchboard::tls::Tls>) {
    let Some(mut hup) = hup else {
        return;
    };
    while hup.recv().await.is_some() {
        match &tls {
            None => tracing::info!("SIGHUP received: no TLS configured, nothing to reload"),
            Some(tls) => match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP received: TLS certificate reloaded"),
                Err(e) => tracing::error!("SIGHUP received: {e}; keeping the previous certificate"),
            },
        }
    }
}
