//! The shared engine of a several-node test, Redis or NATS: a test written once against a
//! [`Broker`] runs for both (see [`both_engines!`](crate::both_engines)), so that what nodes promise
//! each other through Redis is checked through NATS too, without a copy of the test.

use switchboard::Config;
use switchboard::config::EngineKind;
use switchboard_engine_nats::testing::NatsServer;
use switchboard_engine_redis::testing::RedisServer;

/// A throwaway `redis-server` or `nats-server -js` of the test's own, stopped when dropped.
pub enum Broker {
    /// The Redis engine's.
    Redis(RedisServer),
    /// The NATS engine's.
    Nats(NatsServer),
}

impl Broker {
    /// Starts the server `kind` needs (a free port of 127.0.0.1, nothing kept).
    pub fn start(kind: EngineKind) -> Self {
        match kind {
            EngineKind::Redis => Broker::Redis(RedisServer::start()),
            EngineKind::Nats => Broker::Nats(NatsServer::start()),
            EngineKind::Memory => panic!("the memory engine has no broker to share"),
        }
    }

    /// A node's configuration on this broker: as [`super::redis_node_config`], with this engine.
    pub fn node_config(&self, key: &str, prefix: &str) -> Config {
        match self {
            Broker::Redis(r) => super::redis_node_config(key, prefix, vec![r.url()]),
            Broker::Nats(n) => super::nats_node_config(key, prefix, vec![n.url()]),
        }
    }

    /// Stops it at once (SIGKILL for NATS), as a crash would.
    pub fn stop(&mut self) {
        match self {
            Broker::Redis(r) => r.stop(),
            Broker::Nats(n) => n.kill(),
        }
    }

    /// Starts it again on the same port, empty: Redis keeps nothing (no persistence), and NATS
    /// comes back without its JetStream store, so that both lose every stream alike.
    pub fn restart(&mut self) {
        match self {
            Broker::Redis(r) => r.restart(),
            Broker::Nats(n) => n.restart_empty(),
        }
    }

    /// The environment that gives a node run as a process of its own this engine, under `prefix`.
    pub fn engine_env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        match self {
            Broker::Redis(r) => vec![
                ("SWITCHBOARD_ENGINE__TYPE", "redis".to_owned()),
                (
                    "SWITCHBOARD_ENGINE__REDIS__ADDRESSES",
                    format!("[\"{}\"]", r.url()),
                ),
                ("SWITCHBOARD_ENGINE__REDIS__PREFIX", prefix.to_owned()),
            ],
            Broker::Nats(n) => vec![
                ("SWITCHBOARD_ENGINE__TYPE", "nats".to_owned()),
                (
                    "SWITCHBOARD_ENGINE__NATS__SERVERS",
                    format!("[\"{}\"]", n.url()),
                ),
                ("SWITCHBOARD_ENGINE__NATS__PREFIX", prefix.to_owned()),
            ],
        }
    }

    /// The `[engine]` section of a configuration file for a node run as a process of its own.
    pub fn engine_toml(&self, prefix: &str) -> String {
        match self {
            Broker::Redis(r) => format!(
                "[engine]\ntype = \"redis\"\n[engine.redis]\naddresses = [\"{}\"]\nprefix = \"{prefix}\"\n",
                r.url()
            ),
            Broker::Nats(n) => format!(
                "[engine]\ntype = \"nats\"\n[engine.nats]\nservers = [\"{}\"]\nprefix = \"{prefix}\"\n",
                n.url()
            ),
        }
    }
}

/// Runs each named `async fn(EngineKind)` as two tests, `redis::name` and `nats::name`.
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),+ $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(switchboard::config::EngineKind::Redis).await
                }
            )+
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(switchboard::config::EngineKind::Nats).await
                }
            )+
        }
    };
}
