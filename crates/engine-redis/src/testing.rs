//! Throwaway Redis for tests: a `redis-server` ([`RedisServer`]) or a Redis Cluster of three masters
//! ([`RedisCluster`]), on free ports of 127.0.0.1 (never the machine's 6379), without persistence,
//! stopped when dropped. Tests of this crate and of the server's several-node setup use them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_engine::conformance::Server;
use switchboard_engine::testing::process::{self, Process, Served, free_port, on_a_free_port};

use crate::RedisConfig;

/// An engine's configuration on `addresses` as tests want it: timeouts of seconds, so that a Redis
/// that is missing or away fails a test quickly, and presence that expires a second after its node
/// stops. A test changes the fields its check is about (`RedisConfig { cluster: true, ..config(a) }`).
pub fn config(addresses: Vec<String>) -> RedisConfig {
    RedisConfig {
        addresses,
        prefix: "test".into(),
        presence_ttl: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        cluster: false,
    }
}

/// The URLs of `servers`, for [`config`]: a sharded engine lists every one.
pub fn urls(servers: &[&RedisServer]) -> Vec<String> {
    servers.iter().map(|s| s.url()).collect()
}

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port, and its process while it runs.
    served: Served,
    /// Arguments beyond port, address and persistence (a cluster node's settings).
    extra: Vec<String>,
}

/// The binary to run: `$REDIS_SERVER`, else `redis-server` on the `PATH`.
fn binary() -> String {
    process::binary("REDIS_SERVER", &[], "redis-server")
}

impl RedisServer {
    /// Starts one on a free port. Panics (a test helper) when `redis-server` is missing or does not
    /// come up within 10 s.
    pub fn start() -> Self {
        on_a_free_port("redis-server", |port| Self::spawned(port, Vec::new()))
    }

    /// Starts one on `port` (to bring a stopped server back at the same address).
    pub fn start_on(port: u16) -> Self {
        Self::spawned(port, Vec::new())
            .unwrap_or_else(|| panic!("redis-server could not bind port {port}"))
    }

    /// A server on `port` with `extra` arguments, started; `None` when the port was taken.
    fn spawned(port: u16, extra: Vec<String>) -> Option<Self> {
        let mut s = Self {
            served: Served::new("redis-server", port),
            extra,
        };
        let process = s.spawn();
        s.served.run(process).then_some(s)
    }

    /// Starts the process; `None` if it exited (port taken). Waits until it is *this* process that
    /// answers on the port, not another test's Redis.
    fn spawn(&self) -> Option<Process> {
        let mut command = Command::new(binary());
        command
            .args([
                "--port",
                &self.served.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .args(&self.extra);
        let addr = self.addr();
        Process::spawn(
            command,
            &self.served.describe(),
            "install Redis (apt-get install redis-server; scripts/setup.sh does) or set REDIS_SERVER",
            |pid| pid_on(addr) == Some(pid),
        )
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// Its address as a URL for `[engine.redis] addresses`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// Freezes it with SIGSTOP: connections stay open and nothing answers, as when Redis hangs (a
    /// long fork, swapping, a stalled VM) rather than dies. [`RedisServer::resume`] or drop undoes it.
    pub fn pause(&mut self) {
        self.served.pause();
    }

    /// Lets a [`RedisServer::pause`]d server run again (SIGCONT): what it received meanwhile is then
    /// processed.
    pub fn resume(&mut self) {
        self.served.resume();
    }

    /// Kills it (its data is gone: no persistence) and waits until the port is free.
    pub fn stop(&mut self) {
        self.served.stop();
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let process = self.spawn();
        self.served.run_again(process);
    }
}

impl Server for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }

    fn restart_empty(&mut self) {
        self.restart();
    }
}

/// The process id of the Redis answering on `addr` (`INFO server`), if one does.
fn pid_on(addr: SocketAddr) -> Option<u32> {
    let info = call_text(addr, &["INFO", "server"])?.ok()?;
    let rest = info.split("process_id:").nth(1)?;
    rest.split("\r\n").next()?.trim().parse().ok()
}

/// A reply of Redis, as far as these helpers need it.
#[derive(Debug)]
enum Reply {
    /// A simple or bulk string, or an integer as text.
    Text(String),
    /// An error reply's message.
    Error(String),
    /// A null bulk string or array.
    Nil,
    /// An array.
    Array(Vec<Reply>),
}

/// Sends one command to the Redis at `addr` and returns its reply; `None` when nothing answers.
fn call(addr: SocketAddr, args: &[&str]) -> Option<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0_u8; 4096];
    while reply.len() < 1 << 24 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some((r, _)) = parse_reply(&reply) {
            return Some(r);
        }
    }
    None
}

/// [`call`] for a command answering a string: `Err` with the message of an error reply.
fn call_text(addr: SocketAddr, args: &[&str]) -> Option<Result<String, String>> {
    match call(addr, args)? {
        Reply::Text(t) => Some(Ok(t)),
        Reply::Nil => Some(Ok(String::new())),
        Reply::Error(e) => Some(Err(e)),
        Reply::Array(_) => Some(Err(format!(
            "{args:?}: an array where a string was expected"
        ))),
    }
}

/// The reply at the start of `buf` and its length; `None` while more bytes are needed.
fn parse_reply(buf: &[u8]) -> Option<(Reply, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(buf.get(1..end)?).into_owned();
    let next = end + 2;
    match buf.first() {
        Some(b'+' | b':') => Some((Reply::Text(line), next)),
        Some(b'-') => Some((Reply::Error(line), next)),
        Some(b'$') => {
            let Ok(len) = line.parse::<usize>() else {
                return Some((Reply::Nil, next));
            };
            let body = buf.get(next..next + len)?;
            buf.get(next + len..next + len + 2)?;
            Some((
                Reply::Text(String::from_utf8_lossy(body).into_owned()),
                next + len + 2,
            ))
        }
        Some(b'*') => {
            let Ok(len) = line.parse::<usize>() else {
                return Some((Reply::Nil, next));
            };
            let (mut items, mut at) = (Vec::with_capacity(len), next);
            for _ in 0..len {
                let (item, used) = parse_reply(buf.get(at..)?)?;
                items.push(item);
                at += used;
            }
            Some((Reply::Array(items), at))
        }
        // Not RESP2: give up on it as a (strange) error rather than wait for more.
        _ => Some((Reply::Error(format!("unexpected reply: {line}")), buf.len())),
    }
}

/// The binary creating clusters: `$REDIS_CLI`, else `redis-cli` on the `PATH`.
fn cli_binary() -> String {
    std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

/// A Redis Cluster of three masters without replicas (the slots split evenly between them), each on
/// free ports of 127.0.0.1 with a temporary directory of its own for its `nodes.conf`, without
/// persistence of data. Dropping it kills every node and removes the directories.
///
/// Needs `redis-server` 7.0 or later (sharded pub/sub) and `redis-cli` (`$REDIS_CLI`; Debian package
/// `redis-tools`, which `scripts/setup.sh` installs). Nodes notice a peer that stopped within a second
/// (`cluster-node-timeout`), and keep serving their own slots when another master is down
/// (`cluster-require-full-coverage no`), so a test can take one shard away.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dirs: Vec<PathBuf>,
}

/// Masters in a [`RedisCluster`]: the fewest Redis accepts.
const MASTERS: usize = 3;

impl RedisCluster {
    /// Starts three nodes, joins them into one cluster and waits until every node sees all slots
    /// served. Panics (a test helper) when `redis-server` or `redis-cli` is missing, or the cluster
    /// does not form within 20 s.
    pub fn start() -> Self {
        let mut cluster = Self {
            nodes: Vec::new(),
            dirs: Vec::new(),
        };
        // Pushed one by one: if a later step panics, drop still cleans up what started.
        for _ in 0..MASTERS {
            cluster.start_node();
        }
        let addrs: Vec<String> = cluster.addrs().iter().map(ToString::to_string).collect();
        let out = Command::new(cli_binary())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install it (apt-get install redis-tools; scripts/setup.sh does) or set REDIS_CLI",
                    cli_binary()
                )
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_until_ok();
        cluster
    }

    /// Starts one cluster-enabled node on a free port, with a free cluster bus port (the default,
    /// port + 10000, may be beyond 65535 or taken).
    fn start_node(&mut self) {
        for _ in 0..5 {
            // Both listeners are held at once, so the two ports differ.
            let (port, bus) = {
                let a = TcpListener::bind("127.0.0.1:0");
                let b = TcpListener::bind("127.0.0.1:0");
                match (
                    a.and_then(|l| l.local_addr()),
                    b.and_then(|l| l.local_addr()),
                ) {
                    (Ok(a), Ok(b)) => (a.port(), b.port()),
                    _ => (free_port(), free_port()),
                }
            };
            let dir = std::env::temp_dir().join(format!(
                "switchboard-redis-cluster-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                "--dir",
                &dir.to_string_lossy(),
            ]
            .map(String::from)
            .to_vec();
            if let Some(node) = RedisServer::spawned(port, extra) {
                self.nodes.push(node);
                self.dirs.push(dir);
                return;
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("a cluster node could not bind free ports in 5 tries");
    }

    /// Waits until every running node reports the cluster ok, with all slots served and every
    /// master known. Panics after 20 s.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in self.nodes.iter().filter(|n| n.served.is_running()) {
            loop {
                let info = call_text(node.addr(), &["CLUSTER", "INFO"])
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let ok = info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()));
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster is not ok on {} within 20 s: {info}",
                    node.addr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The nodes' addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// The nodes' addresses as URLs for `[engine.redis] addresses` (with `cluster = true`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Node `i` (0, 1 or 2), to stop or restart it. A restarted node comes back empty, with the same
    /// id and slots (its `nodes.conf` is kept); [`RedisCluster::wait_until_ok`] waits for it.
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of a running node).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.ask(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"))
    }

    /// Which node (its index) serves the slot of `key`, by `CLUSTER NODES`.
    pub fn owner_of(&self, key: &str) -> usize {
        self.owner_of_slot(self.slot_of(key))
    }

    /// Which node (its index) serves `slot`, by `CLUSTER NODES` of the first running node.
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        let nodes = self.ask(&["CLUSTER", "NODES"]);
        self.owner_in(&nodes, slot)
            .unwrap_or_else(|| panic!("no node serves slot {slot}: {nodes}"))
    }

    /// The owner of `slot` in the `CLUSTER NODES` text `nodes`.
    fn owner_in(&self, nodes: &str, slot: u16) -> Option<usize> {
        for line in nodes.lines() {
            // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(port) = fields
                .get(1)
                .and_then(|a| a.split('@').next())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let serves = fields.iter().skip(8).any(|range| {
                let mut ends = range.splitn(2, '-').map(str::parse::<u16>);
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), None) => a == slot,
                    (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                    // `[slot->-id]`: a slot being moved, still served by this node's other ranges.
                    _ => false,
                }
            });
            if serves {
                return self.nodes.iter().position(|n| n.served.port() == port);
            }
        }
        None
    }

    /// Moves `slot` with its keys to node `to`, the way a resharding does (`CLUSTER SETSLOT`
    /// `IMPORTING`/`MIGRATING`, `MIGRATE`, then `NODE` on every node), and waits until every node
    /// agrees. Every node must be running.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.owner_of_slot(slot);
        if from == to {
            return;
        }
        let id = |i: usize| self.ask_node(i, &["CLUSTER", "MYID"]);
        let (from_id, to_id) = (id(from), id(to));
        let slot_arg = slot.to_string();
        self.ask_node(
            to,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
        );
        self.ask_node(
            from,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
        );
        let to_port = self.nodes[to].served.port().to_string();
        loop {
            let keys = match call(
                self.nodes[from].addr(),
                &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"],
            ) {
                Some(Reply::Array(keys)) => keys,
                other => panic!("CLUSTER GETKEYSINSLOT {slot}: {other:?}"),
            };
            let keys: Vec<String> = keys
                .into_iter()
                .filter_map(|k| match k {
                    Reply::Text(k) => Some(k),
                    _ => None,
                })
                .collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            self.ask_node(from, &migrate);
        }
        // The new owner first, then the old one (which then drops its subscribers of the slot's
        // sharded channels), then the rest.
        let mut order = vec![to, from];
        order.extend((0..self.nodes.len()).filter(|i| *i != to && *i != from));
        for i in order {
            self.ask_node(i, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let nodes = call_text(node.addr(), &["CLUSTER", "NODES"])
                    .and_then(Result::ok)
                    .unwrap_or_default();
                if self.owner_in(&nodes, slot) == Some(to) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} does not see slot {slot} on node {to} within 20 s: {nodes}",
                    node.addr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The reply of node `i` to `args`; panics on an error reply.
    fn ask_node(&self, i: usize, args: &[&str]) -> String {
        call_text(self.nodes[i].addr(), args)
            .unwrap_or_else(|| panic!("node {i} does not answer {args:?}"))
            .unwrap_or_else(|e| panic!("node {i}: {args:?}: {e}"))
    }

    /// The reply of the first running node to `args`.
    fn ask(&self, args: &[&str]) -> String {
        for node in self.nodes.iter().filter(|n| n.served.is_running()) {
            if let Some(reply) = call_text(node.addr(), args) {
                return reply.unwrap_or_else(|e| panic!("{args:?}: {e}"));
            }
        }
        panic!("no cluster node answers {args:?}");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Processes first: a running node may still write its nodes.conf.
        self.nodes.clear();
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
