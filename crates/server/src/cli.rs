//! The `switchboard` command line. Running it with no subcommand is `switchboard serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use figment::Figment;
use figment::providers::Serialized;

use crate::config::LogFormat;

/// switchboard: a real-time push server.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, also accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Load a configuration file (with the environment) and report what is wrong with it, if anything.
    Checkconfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print a commented configuration with a fresh API key, token secret and console password
    /// hash (the console password itself goes to stderr, once).
    Genconfig,
    /// Read a password from stdin (one line) and print its Argon2 hash, for `[admin] password_hash`.
    Hashpassword,
    /// Print a connection token (HS256, signed with [auth] hmac_secret) for a user.
    Gentoken {
        /// The user id (`sub`).
        #[arg(long, short)]
        user: String,
        /// Lifetime, e.g. `1h`; without it the token never expires.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// A channel to subscribe the connection to at connect (repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Presence info, as JSON.
        #[arg(long)]
        info: Option<String>,
        /// Configuration file with the secret (the environment works too).
        #[arg(long, short, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print every publication of a channel as one JSON line on stdout, as a WebSocket client that
    /// reconnects and recovers what it missed. Progress goes to stderr.
    Subscribe(SubscribeArgs),
    /// Publish to a channel through the server API (or, with --as-client, a WebSocket connection).
    Publish(PublishArgs),
}

/// Where a client subcommand connects, and as whom.
#[derive(Debug, Default, Clone, Args)]
pub struct ClientArgs {
    /// The server's client endpoint [default: from the configuration's `listen` and
    /// `websocket_path`, i.e. ws://127.0.0.1:8080/connection/websocket].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Connection token (a JWT, see `gentoken`); anonymous without one.
    #[arg(long)]
    pub token: Option<String>,
    /// Configuration file for the defaults of --url, --api and --api-key (the environment works too).
    #[arg(long, short, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `switchboard subscribe`.
#[derive(Debug, Clone, Args)]
pub struct SubscribeArgs {
    /// The channel, `name` or `namespace:name`.
    pub channel: String,
    /// Exit after this many publications.
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
    /// Connection settings.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `switchboard publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The channel, `name` or `namespace:name`.
    pub channel: String,
    /// The publication, as JSON (`'{"text":"hi"}'`, `'"a string"'`); `-` reads one publication per
    /// line from stdin until it ends.
    pub data: String,
    /// Publish each line (or DATA) as a JSON string, as is, instead of parsing it as JSON.
    #[arg(long)]
    pub text: bool,
    /// The server API [default: http:// and the configuration's `api.listen`, i.e.
    /// http://127.0.0.1:8081].
    #[arg(long, value_name = "URL", conflicts_with = "as_client")]
    pub api: Option<String>,
    /// The API key [default: the configuration's `api.key`, e.g. from SWITCHBOARD_API__KEY].
    #[arg(long, value_name = "KEY", conflicts_with = "as_client")]
    pub api_key: Option<String>,
    /// Publish as a client, through a WebSocket connection (the namespace must allow client
    /// publications), instead of through the server API.
    #[arg(long)]
    pub as_client: bool,
    /// Tries per publication. A publication that timed out or failed temporarily (503, error 100)
    /// may have been applied all the same, so every attempt carries the same idempotency key: the
    /// server applies it at most once.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: u32,
    /// How long one attempt waits for the server's answer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// The idempotency key, instead of a random one per publication (with DATA `-`, line N gets
    /// `KEY-N`): running the same command again within the server's idempotency window then
    /// publishes nothing twice.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Connection settings (--url and --token apply with --as-client).
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Settings of `serve` that have flags. Every one of them is also a config key.
#[derive(Debug, Default, Clone, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for clients [config: listen; default 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the server API for backends [config: api.listen; default 127.0.0.1:8081].
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<SocketAddr>,
    /// Serve the conformance echo endpoint at /echo [config: echo.enabled].
    #[arg(long)]
    pub echo: bool,
    /// Serve the chat demo at / with its `chat` namespace, anonymous clients welcome
    /// [config: demo.enabled].
    #[arg(long)]
    pub demo: bool,
    /// Log filter, e.g. `info` or `switchboard=debug` [config: log.level].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format [config: log.format].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The flags that were given, as the highest-precedence configuration layer.
    pub fn overrides(&self) -> Figment {
        let mut fig = Figment::new();
        if let Some(listen) = self.listen {
            fig = fig.merge(Serialized::default("listen", listen.to_string()));
        }
        if let Some(addr) = self.api_listen {
            fig = fig.merge(Serialized::default("api.listen", addr.to_string()));
        }
        if self.echo {
            fig = fig.merge(Serialized::default("echo.enabled", true));
        }
        if self.demo {
            fig = fig.merge(Serialized::default("demo.enabled", true));
        }
        if let Some(level) = &self.log_level {
            fig = fig.merge(Serialized::default("log.level", level));
        }
        if let Some(format) = self.log_format {
            fig = fig.merge(Serialized::default("log.format", format));
        }
        fig
    }
}
