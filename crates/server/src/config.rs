//! Settings: built-in defaults, then a TOML file, then `SWITCHBOARD_*` environment variables, then
//! command-line flags, each overriding the one before.
//!
//! Nested keys use `__` in environment variables: `SWITCHBOARD_WEBSOCKET__PING_INTERVAL=10s` sets
//! `[websocket] ping_interval`. Bad values are refused at start with the key's name, and so are unknown
//! keys in a file; an environment variable whose name starts with `SWITCHBOARD_` but names no setting
//! (`SWITCHBOARD_BIN`, set for some other program) is ignored with a warning naming it, since the
//! environment is shared with everything else the machine runs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration of a switchboard node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the client-facing HTTP listener (WebSocket upgrades and, later, fallbacks).
    pub listen: ListenAddr,
    /// Logging.
    pub log: LogConfig,
    /// The HTTP layer in front of every endpoint.
    pub http: HttpConfig,
    /// TLS on the client listener (certificate reloaded on SIGHUP).
    pub tls: crate::tls::TlsConfig,
    /// Limits on client connections: in total, per address, and how fast one address opens them.
    pub limits: crate::limits::LimitsConfig,
    /// Client WebSocket endpoints: handshake policy, limits, keepalive, compression.
    pub websocket: switchboard_websocket::Config,
    /// Path of the client protocol's WebSocket endpoint.
    pub websocket_path: String,
    /// The HTTP fallback transports (SSE, long polling, ajax polling).
    pub fallback: crate::transport::fallback::config::FallbackConfig,
    /// Socket.IO clients (Engine.IO v4, Socket.IO v5), off unless asked for.
    pub socketio: crate::transport::socketio::config::SocketIoConfig,
    /// Client connections, whatever the transport: anonymous access, queue bound, channel limit.
    pub client: switchboard_hub::ClientConfig,
    /// Channel namespaces: history, recovery, presence, permissions.
    pub channels: switchboard_hub::ChannelsConfig,
    /// Keys for connection and subscription tokens (JWT).
    pub auth: switchboard_auth::AuthConfig,
    /// The server HTTP API for backends (its own listener).
    pub api: switchboard_api::ApiConfig,
    /// Client events forwarded to the application's backend (connect, rpc, ...).
    pub proxy: switchboard_proxy::ProxyConfig,
    /// The conformance echo endpoint (off unless asked for).
    pub echo: EchoConfig,
    /// The chat demo at `/` (off unless asked for).
    pub demo: DemoConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Where channels, history and presence live: this process only, or Redis (several nodes).
    pub engine: EngineConfig,
    /// The operator's console at `/admin/` on the API listener (off unless asked for).
    pub admin: crate::admin::config::AdminConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: ListenAddr::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            tls: crate::tls::TlsConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            websocket: switchboard_websocket::Config {
                subprotocols: vec![switchboard_protocol::SUBPROTOCOL.to_owned()],
                ..Default::default()
            },
            websocket_path: "/connection/websocket".into(),
            fallback: crate::transport::fallback::config::FallbackConfig::default(),
            socketio: crate::transport::socketio::config::SocketIoConfig::default(),
            client: switchboard_hub::ClientConfig::default(),
            channels: switchboard_hub::ChannelsConfig::default(),
            auth: switchboard_auth::AuthConfig::default(),
            api: switchboard_api::ApiConfig::default(),
            proxy: switchboard_proxy::ProxyConfig::default(),
            echo: EchoConfig::default(),
            demo: DemoConfig::default(),
            shutdown: ShutdownConfig::default(),
            engine: EngineConfig::default(),
            admin: crate::admin::config::AdminConfig::default(),
        }
    }
}

/// A listen address; its own type so that the default (`127.0.0.1:8080`) never exposes a node by accident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct ListenAddr(pub SocketAddr);

impl Default for ListenAddr {
    fn default() -> Self {
        Self(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`info`) or per-module directives (`switchboard=debug,hyper=warn`).
    /// `RUST_LOG`, when set, wins.
    pub level: String,
    /// `pretty` for people, `json` for log collectors.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Pretty,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Settings of the HTTP/1.1 layer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A client must send its request headers within this time (slowloris protection).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 << 10,
        }
    }
}

/// The `/echo` endpoint used by the Autobahn conformance suite and the benchmarks.
///
/// It takes every other setting from `[websocket]`, but has its own limits: the suite sends 16 MiB
/// messages and 4 MiB ones in 64-byte fragments (65,536 of them plus a final frame), far above what a
/// real endpoint should accept.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoConfig {
    /// Serve the echo endpoint.
    pub enabled: bool,
    /// Its path.
    pub path: String,
    /// Largest frame payload, in bytes.
    pub max_frame_size: usize,
    /// Largest message, in bytes.
    pub max_message_size: usize,
    /// Most fragments per message.
    pub max_fragments: usize,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/echo".into(),
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_fragments: 131_072,
        }
    }
}

impl EchoConfig {
    /// The echo endpoint's WebSocket settings: `base` with the echo limits.
    pub fn websocket(&self, base: &switchboard_websocket::Config) -> switchboard_websocket::Config {
        switchboard_websocket::Config {
            max_frame_size: self.max_frame_size,
            max_message_size: self.max_message_size,
            max_fragments: self.max_fragments,
            write_high_water: base.write_high_water.max(self.max_message_size),
            ..base.clone()
        }
    }
}

/// The chat demo (`--demo`): the page at `/` and, unless the configuration names one, a `chat`
/// namespace for it (history with recovery, presence with join/leave, client publications). Meant for
/// trying switchboard out: anyone who can reach the server may chat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo.
    pub enabled: bool,
}

impl Config {
    /// The configuration the server runs with: under the demo, Socket.IO on, and the demo's `chat`
    /// namespace added when no `chat` namespace is configured.
    pub fn effective(mut self) -> Self {
        if self.demo.enabled {
            // The demo's page may be opened with a Socket.IO client too.
            self.socketio.enabled = true;
        }
        if self.demo.enabled && !self.channels.namespaces.contains_key("chat") {
            self.channels.namespaces.insert(
                "chat".into(),
                switchboard_hub::NamespaceOptions::all_on(100, Duration::from_secs(600)),
            );
        }
        self
    }
}

/// Graceful shutdown settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM/SIGINT, clients get close 1001 and this long to finish; then the process exits.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Each client is told to wait a random time up to this before reconnecting (the `delay` of its
    /// `disconnect` push), so that a restart does not bring every client back in the same second.
    #[serde(with = "humantime_serde")]
    pub reconnect_spread: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
            reconnect_spread: Duration::from_secs(5),
        }
    }
}

impl ShutdownConfig {
    /// A random reconnect delay for one client, in milliseconds: uniform in `[0, reconnect_spread]`.
    pub fn reconnect_delay_ms(&self) -> u64 {
        let spread = u64::try_from(self.reconnect_spread.as_millis()).unwrap_or(u64::MAX);
        match spread {
            0 => 0,
            // The OS random source failing is not worth a panic: no spread for this client then.
            s => getrandom::u64().map_or(0, |r| r % (s + 1)),
        }
    }
}

/// The `[engine]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Which engine: `memory` (one node, nothing to install), `redis` (several nodes share
    /// channels through Redis; see `[engine.redis]`) or `nats` (through NATS with JetStream; see
    /// `[engine.nats]`).
    #[serde(rename = "type")]
    pub kind: EngineKind,
    /// How often each node announces itself (with its counts) to the others, for the API's `info`.
    /// A node not heard from for three intervals leaves the list.
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    /// How long an API call that acts on every node (`subscribe`, `unsubscribe`, `disconnect`,
    /// `refresh`, `channels`) waits for the other nodes' answers; it then answers without the late
    /// ones, counting them in `unanswered`.
    #[serde(with = "humantime_serde")]
    pub control_timeout: Duration,
    /// Settings of the Redis engine (used when `type = "redis"`).
    pub redis: switchboard_engine_redis::RedisConfig,
    /// Settings of the NATS engine (used when `type = "nats"`).
    pub nats: switchboard_engine_nats::NatsConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cluster = switchboard_hub::ClusterConfig::default();
        Self {
            kind: EngineKind::default(),
            announce_interval: cluster.announce_interval,
            control_timeout: cluster.control_timeout,
            redis: switchboard_engine_redis::RedisConfig::default(),
            nats: switchboard_engine_nats::NatsConfig::default(),
        }
    }
}

/// The engine's kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In this process: one node.
    #[default]
    Memory,
    /// Redis: several nodes.
    Redis,
    /// NATS with JetStream: several nodes.
    Nats,
}

/// A configuration that could not be loaded, with the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file, environment or flag value that does not fit.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        // figment's own message names the key and where it came from (file or environment).
        Self::Invalid(e.to_string())
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then the environment, then `overrides` (from flags).
    /// Warnings (ignored environment variables) go to stderr; see [`Config::load_with_warnings`].
    pub fn load(file: Option<&Path>, overrides: &Figment) -> Result<Self, ConfigError> {
        let (config, warnings) = Self::load_with_warnings(file, overrides)?;
        for w in warnings {
            eprintln!("switchboard: warning: {w}");
        }
        Ok(config)
    }

    /// [`Config::load`], with the warnings returned for the caller to log: one per `SWITCHBOARD_*`
    /// environment variable that names no setting and was therefore ignored.
    pub fn load_with_warnings(
        file: Option<&Path>,
        overrides: &Figment,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        let env = || {
            Env::prefixed("SWITCHBOARD_")
                .split("__")
                .ignore(&["config"])
        };
        // Dotted keys (`websocket.ping_interval`) the environment sets.
        let from_env: Vec<String> = env().iter().map(|(k, _)| k.to_string()).collect();
        let mut ignored: Vec<String> = Vec::new();
        let mut warnings = Vec::new();
        loop {
            let skip = ignored.clone();
            let env = env().filter(move |k| !skip.iter().any(|i| within(k.as_str(), i)));
            let err = match fig
                .clone()
                .merge(env)
                .merge(overrides.clone())
                .extract::<Config>()
            {
                Ok(config) => {
                    config.validate()?;
                    return Ok((config, warnings));
                }
                Err(e) => e,
            };
            // An unknown key that the environment sets: ignore those variables and try again. The
            // same key in the file (or a flag) is still refused on the next round.
            let figment::error::Kind::UnknownField(field, _) = &err.kind else {
                return Err(err.into());
            };
            let mut key = err.path.clone();
            if key.last() != Some(field) {
                key.push(field.clone());
            }
            let key = key.join(".");
            let vars: Vec<&String> = from_env
                .iter()
                .filter(|k| within(k, &key) && !ignored.iter().any(|i| within(k, i)))
                .collect();
            if vars.is_empty() {
                return Err(err.into());
            }
            for var in vars {
                warnings.push(format!(
                    "environment variable {} names no setting ({key:?} is unknown): ignored",
                    env_name(var)
                ));
            }
            ignored.push(key);
        }
    }

    /// Parses a TOML document on top of the defaults (no environment), for tests and `checkconfig`.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.channels
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("[channels] {e}")))?;
        self.tls.validate().map_err(ConfigError::Invalid)?;
        self.proxy
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let namespaces = std::iter::once(("(default)", &self.channels.default)).chain(
            self.channels
                .namespaces
                .iter()
                .map(|(k, v)| (k.as_str(), v)),
        );
        for (name, ns) in namespaces {
            if ns.subscribe_proxy && self.proxy.subscribe.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "[channels] namespace {name}: subscribe_proxy needs proxy.subscribe (a URL)"
                )));
            }
            if ns.publish_proxy && self.proxy.publish.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "[channels] namespace {name}: publish_proxy needs proxy.publish (a URL)"
                )));
            }
        }
        if !self.websocket_path.starts_with('/') {
            return Err(ConfigError::Invalid(
                "websocket_path must start with '/'".into(),
            ));
        }
        self.websocket
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("[websocket] {e}")))?;
        self.fallback
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("[fallback] {e}")))?;
        self.socketio
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("[socketio] {e}")))?;
        if self.engine.announce_interval < Duration::from_millis(10)
            || self.engine.control_timeout < Duration::from_millis(10)
        {
            return Err(ConfigError::Invalid(
                "[engine] announce_interval and control_timeout must be at least 10ms".into(),
            ));
        }
        if self.engine.kind == EngineKind::Redis {
            self.engine
                .redis
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.engine.kind == EngineKind::Nats {
            self.engine
                .nats
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        self.admin
            .validate(self.auth.has_keys())
            .map_err(ConfigError::Invalid)?;
        if self.echo.enabled {
            self.echo
                .websocket(&self.websocket)
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("[echo] {e}")))?;
            if !self.echo.path.starts_with('/') {
                return Err(ConfigError::Invalid(
                    "[echo] path must start with '/'".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Whether dotted `key` is `prefix` or inside it (`a.b` is within `a`).
fn within(key: &str, prefix: &str) -> bool {
    key.eq_ignore_ascii_case(prefix)
        || (key.len() > prefix.len()
            && key.as_bytes()[prefix.len()] == b'.'
            && key[..prefix.len()].eq_ignore_ascii_case(prefix))
}

/// The environment variable that sets dotted `key`, as an operator would write it.
fn env_name(key: &str) -> String {
    format!(
        "SWITCHBOARD_{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults() {
        let c = Config::from_toml(
            r#"
            listen = "127.0.0.1:9000"
            [websocket]
            ping_interval = "5s"
            subprotocols = ["chat"]
            [websocket.compression]
            level = 6
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.0.port(), 9000);
        assert_eq!(c.websocket.ping_interval, Duration::from_secs(5));
        assert_eq!(c.websocket.compression.level, 6);
        assert_eq!(c.websocket.max_message_size, 1 << 20);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = Config::from_toml("[websocket]\nping_intervall = \"5s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ping_intervall"), "{err}");
        let err = Config::from_toml("[websocket]\nping_interval = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ping_interval"), "{err}");
        let err = Config::from_toml("[websocket.compression]\nlevel = 12")
            .unwrap_err()
            .to_string();
        assert!(err.contains("level"), "{err}");
    }

    /// Every setting as a dotted key (`websocket.compression.level`), from the defaults.
    fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            // An empty section (all of its settings absent by default) has no leaf of its own.
            toml::Value::Table(t) if t.is_empty() => {}
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    keys(&key, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    #[test]
    fn the_nats_engine_is_chosen_and_checked_like_redis() {
        let c = Config::from_toml(
            r#"
            [engine]
            type = "nats"
            [engine.nats]
            servers = ["nats://10.0.0.1:4222", "10.0.0.2:4222"]
            token = "s3cret"
            storage = "memory"
            presence_ttl = "30s"
            "#,
        )
        .unwrap();
        assert_eq!(c.engine.kind, EngineKind::Nats);
        assert_eq!(c.engine.nats.servers.len(), 2);
        assert_eq!(
            c.engine.nats.storage,
            switchboard_engine_nats::NatsStorage::Memory
        );
        assert_eq!(c.engine.nats.presence_ttl, Duration::from_secs(30));
        let err = Config::from_toml("[engine]\ntype = \"nats\"\n[engine.nats]\nservers = []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[engine.nats] servers"), "{err}");
        let err = Config::from_toml("[engine]\ntype = \"nats\"\n[engine.nats]\nprefix = \"a.b\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefix"), "{err}");
        // Checked only when chosen, like Redis's.
        assert!(Config::from_toml("[engine.nats]\nservers = []").is_ok());
    }

    #[test]
    fn nats_nkey_tls_and_domain_settings_are_read_and_checked() {
        // Any existing file stands for the seed, CA, certificate and key files.
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let c = Config::from_toml(&format!(
            r#"
            [engine]
            type = "nats"
            [engine.nats]
            servers = ["tls://10.0.0.1:4222"]
            nkey_seed_file = "{file}"
            tls_ca_file = "{file}"
            tls_cert_file = "{file}"
            tls_key_file = "{file}"
            tls_required = true
            jetstream_domain = "hub"
            connect_timeout = "3s"
            command_timeout = "2s"
            "#
        ))
        .unwrap();
        let n = &c.engine.nats;
        assert_eq!(
            n.nkey_seed_file.as_deref(),
            Some(std::path::Path::new(file))
        );
        assert_eq!(n.tls_ca_file.as_deref(), Some(std::path::Path::new(file)));
        assert!(n.tls_cert_file.is_some() && n.tls_key_file.is_some() && n.tls_required);
        assert_eq!(n.jetstream_domain.as_deref(), Some("hub"));
        assert_eq!(n.command_timeout, Duration::from_secs(2));
        let err = |extra: &str| {
            Config::from_toml(&format!(
                "[engine]\ntype = \"nats\"\n[engine.nats]\n{extra}"
            ))
            .unwrap_err()
            .to_string()
        };
        let e = err("tls_ca_file = \"/nonexistent/ca.pem\"");
        assert!(
            e.contains("[engine.nats] tls_ca_file") && e.contains("/nonexistent"),
            "{e}"
        );
        let e = err(&format!("tls_cert_file = \"{file}\""));
        assert!(e.contains("tls_key_file"), "{e}");
        let e = err(&format!("token = \"t\"\nnkey_seed_file = \"{file}\""));
        assert!(e.contains("choose one"), "{e}");
        let e = err("jetstream_domain = \"a b\"");
        assert!(e.contains("jetstream_domain"), "{e}");
        let e = err("nkey = \"SU...\"");
        assert!(e.contains("nkey"), "unknown keys are refused: {e}");
    }

    #[test]
    fn docs_configuration_md_documents_every_setting_and_only_real_ones() {
        let doc = include_str!("../../../docs/configuration.md");
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let mut all = Vec::new();
        keys("", &defaults, &mut all);
        // Settings whose default is an empty map or absent (None) do not show in the defaults.
        all.extend(
            [
                "channels.namespaces",
                "socketio.namespaces",
                "tls.cert_file",
                "tls.key_file",
                "proxy.connect",
                "proxy.refresh",
                "proxy.subscribe",
                "proxy.publish",
                "proxy.rpc",
                "proxy.sub_refresh",
                "proxy.headers",
                "auth.hmac_secret",
                "auth.rsa_public_key",
                "auth.ecdsa_public_key",
                "auth.ed25519_public_key",
                "auth.jwks_file",
                "auth.audience",
                "auth.issuer",
                "engine.nats.token",
                "engine.nats.user",
                "engine.nats.password",
                "engine.nats.credentials_file",
                "engine.nats.nkey_seed_file",
                "engine.nats.tls_ca_file",
                "engine.nats.tls_cert_file",
                "engine.nats.tls_key_file",
                "engine.nats.jetstream_domain",
            ]
            .map(String::from),
        );
        all.sort();
        all.dedup();
        let missing: Vec<_> = all
            .iter()
            .filter(|k| !doc.contains(&format!("| `{k}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/configuration.md: {missing:#?}"
        );
        // Conversely, every key in the tables is a real setting.
        let documented: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split_once("` |").map(|(k, _)| k))
            .collect();
        let unknown: Vec<_> = documented
            .iter()
            .filter(|k| !all.iter().any(|a| a == *k))
            .collect();
        assert!(
            unknown.is_empty(),
            "documented but not settings: {unknown:#?}"
        );
    }

    #[test]
    fn the_readme_example_is_a_valid_configuration() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README has a TOML example") + 8;
        let end = start + readme[start..].find("```").expect("closed");
        let c = Config::from_toml(&readme[start..end])
            .unwrap_or_else(|e| panic!("README example: {e}"));
        assert!(c.channels.namespaces["chat"].recover);
        assert_eq!(c.websocket_path, "/connection/websocket");
        assert_eq!(
            c.fallback,
            crate::transport::fallback::config::FallbackConfig::default()
        );
    }

    /// Leaf keys where `a` and `b` differ (`websocket.subprotocols`).
    fn differences(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
        match (a, b) {
            (toml::Value::Table(x), toml::Value::Table(y)) => {
                for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match (x.get(k), y.get(k)) {
                        (Some(a), Some(b)) => differences(&key, a, b, out),
                        _ => out.push(key),
                    }
                }
            }
            _ if a != b => out.push(format!("{prefix}: {a} vs {b}")),
            _ => {}
        }
    }

    /// README's configuration block and the defaults column of docs/configuration.md say what the
    /// code's defaults are: one truth, `Config::default()`. (The block's `[channels.namespaces.chat]`
    /// is an example namespace, not a default.)
    #[test]
    fn readme_and_configuration_md_give_the_codes_defaults() {
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README has a TOML example") + 8;
        let end = start + readme[start..].find("```").expect("closed");
        let mut c = Config::from_toml(&readme[start..end]).unwrap();
        c.channels.namespaces.clear();
        let mut wrong = Vec::new();
        differences(
            "",
            &toml::Value::try_from(c).unwrap(),
            &defaults,
            &mut wrong,
        );
        assert!(wrong.is_empty(), "README (vs the code): {wrong:#?}");

        // docs/configuration.md rows: | `key` | `default` | meaning |
        let doc = include_str!("../../../docs/configuration.md");
        let mut checked = 0;
        for line in doc.lines() {
            let Some((key, rest)) = line.strip_prefix("| `").and_then(|r| r.split_once("` | "))
            else {
                continue;
            };
            // "none" and the like: settings absent by default, named by the other docs test.
            let Some(value) = rest
                .strip_prefix('`')
                .and_then(|r| r.split_once("` |"))
                .map(|(v, _)| v)
            else {
                continue;
            };
            let c = Config::from_toml(&format!("{key} = {value}"))
                .unwrap_or_else(|e| panic!("docs/configuration.md {key} = {value}: {e}"));
            differences(
                "",
                &toml::Value::try_from(c).unwrap(),
                &defaults,
                &mut wrong,
            );
            checked += 1;
        }
        assert!(
            checked > 50,
            "only {checked} defaults found in docs/configuration.md"
        );
        assert!(
            wrong.is_empty(),
            "docs/configuration.md (vs the code): {wrong:#?}"
        );
    }

    #[test]
    fn fallback_settings_are_checked() {
        let c = Config::from_toml(
            "[fallback]\npoll_timeout = \"2s\"\nallowed_origins = [\"https://a.example\"]",
        )
        .unwrap();
        assert_eq!(c.fallback.poll_timeout, Duration::from_secs(2));
        for (bad, key) in [
            ("path = \"connection\"", "path"),
            ("session_timeout = \"0s\"", "session_timeout"),
            ("allowed_origins = [\"a.example\"]", "allowed_origins"),
            (
                "allowed_origins = [\"*\"]\nallow_credentials = true",
                "allow_credentials",
            ),
            ("poll_timeot = \"1s\"", "poll_timeot"),
        ] {
            let err = Config::from_toml(&format!("[fallback]\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn the_engine_is_memory_unless_redis_is_asked_for() {
        assert_eq!(Config::default().engine.kind, EngineKind::Memory);
        let c = Config::from_toml(
            r#"
            [engine]
            type = "redis"
            [engine.redis]
            addresses = ["redis://10.0.0.1:6379", "10.0.0.2:6380"]
            prefix = "prod"
            presence_ttl = "30s"
            "#,
        )
        .unwrap();
        assert_eq!(c.engine.kind, EngineKind::Redis);
        assert_eq!(c.engine.redis.addresses.len(), 2);
        assert_eq!(c.engine.redis.presence_ttl, Duration::from_secs(30));
        let err = Config::from_toml("[engine]\ntype = \"mongo\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("type"), "{err}");
        let err = Config::from_toml("[engine]\ntype = \"redis\"\n[engine.redis]\naddresses = []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("addresses"), "{err}");
        let err = Config::from_toml("[engine.redis]\nadresses = []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("adresses"), "{err}");
        let c =
            Config::from_toml("[engine]\nannounce_interval = \"1s\"\ncontrol_timeout = \"500ms\"")
                .unwrap();
        assert_eq!(c.engine.announce_interval, Duration::from_secs(1));
        assert_eq!(c.engine.control_timeout, Duration::from_millis(500));
        let err = Config::from_toml("[engine]\ncontrol_timeout = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("control_timeout"), "{err}");
    }

    #[test]
    fn echo_limits_do_not_leak_into_the_real_endpoint() {
        let c = Config::default();
        let echo = c.echo.websocket(&c.websocket);
        assert_eq!(echo.max_message_size, 16 << 20);
        assert!(echo.max_fragments >= 65_537);
        assert_eq!(c.websocket.max_message_size, 1 << 20);
    }
}
