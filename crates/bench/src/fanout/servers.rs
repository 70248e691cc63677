//! Starting the fan-out servers: switchboard with a bench configuration, nginx + Nchan with a
//! generated nginx.conf, and the Node Socket.IO script. Each one runs in the foreground as one
//! process, so the pid the orchestrator measures is the one doing the work.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use super::wire::Kind;
use crate::harness::{self, built_version, first_line};

/// The switchboard configuration of the benchmark: namespace `bench` with client publishing and a
/// history (like the peers' message buffers), the default 1 MiB client queue, warnings-only logs.
pub const SWITCHBOARD_TOML: &str = r#"# Written by switchboard-bench fanout.
[log]
level = "warn"

[client]
queue_bytes = 1048576

[websocket]
ping_interval = "25s"

[channels.namespaces.bench]
allow_publish = true
history_size = 100
history_ttl = "60s"
"#;

/// [`SWITCHBOARD_TOML`] with Socket.IO on, for [`Kind::SwitchboardSio`] (written after it).
pub const SWITCHBOARD_SIO_TOML: &str = "\n[socketio]\nenabled = true\n";

/// Where Debian installs the Nchan module.
const NCHAN_MODULES: [&str; 2] = [
    "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "/usr/share/nginx/modules/ngx_nchan_module.so",
];
/// Debian's `load_module` snippet for Nchan, used when the module is elsewhere.
const NCHAN_SNIPPET: &str = "/usr/share/nginx/modules-available/mod-nchan.conf";

/// This crate's `peers/NAME` folder.
pub fn peer_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

/// The `load_module` path of Nchan, if installed.
fn nchan_module() -> Option<String> {
    if let Some(path) = NCHAN_MODULES.iter().find(|p| Path::new(p).is_file()) {
        return Some((*path).to_string());
    }
    let snippet = std::fs::read_to_string(NCHAN_SNIPPET).ok()?;
    snippet.lines().find_map(|l| {
        l.trim()
            .strip_prefix("load_module")
            .map(|rest| rest.trim().trim_end_matches(';').trim().to_string())
    })
}

/// Makes sure the server can run: installs nginx + Nchan (apt, via `peers/nchan/install.sh`) or
/// the Socket.IO package (`npm ci`) when missing.
pub fn ensure_installed(kind: Kind) -> Result<()> {
    match kind {
        Kind::Switchboard | Kind::Raw | Kind::SwitchboardSio => Ok(()),
        Kind::Nchan => {
            let have_nginx = Command::new("nginx")
                .arg("-v")
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if have_nginx && nchan_module().is_some() {
                return Ok(());
            }
            eprintln!("installing nginx and libnginx-mod-nchan (apt-get)");
            let script = peer_dir("nchan").join("install.sh");
            let status = Command::new("sh")
                .arg(&script)
                .stdout(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
                .status()
                .with_context(|| format!("running {}", script.display()))?;
            ensure!(status.success(), "{} failed: {status}", script.display());
            ensure!(
                nchan_module().is_some(),
                "Nchan module not found after installing"
            );
            Ok(())
        }
        Kind::Socketio => crate::peers::node::ensure_package(&peer_dir("socketio"), "socket.io"),
    }
}

/// The nginx.conf of the Nchan server: one process in the foreground, WebSocket subscribers on
/// `/sub/ID`, HTTP publisher (and channel info) on `/pub/ID`, a 100-message buffer per channel.
pub fn nginx_conf(dir: &Path, module: &str, listen: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "# Written by switchboard-bench fanout.
load_module {module};
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 20000;
    multi_accept on;
}}

http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;

    nchan_message_buffer_length 100;
    nchan_message_timeout 60s;

    server {{
        listen {listen} backlog=1024;

        location ~ ^/sub/(.+)$ {{
            nchan_subscriber websocket;
            nchan_channel_id $1;
        }}

        location ~ ^/pub/(.+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
        }}
    }}
}}
"
    )
}

/// The command line that starts `kind` on `listen`, writing what it needs (config files) into
/// `work`.
pub fn argv(
    kind: Kind,
    switchboard: Option<&Path>,
    listen: SocketAddr,
    work: &Path,
) -> Result<Vec<OsString>> {
    Ok(match kind {
        Kind::Switchboard => {
            let Some(binary) = switchboard else {
                bail!("no switchboard binary (build it or pass --switchboard PATH)");
            };
            let config = work.join("switchboard-fanout.toml");
            harness::switchboard_serve(binary, &config, SWITCHBOARD_TOML, listen)?
        }
        Kind::SwitchboardSio => {
            let Some(binary) = switchboard else {
                bail!("no switchboard binary (build it or pass --switchboard PATH)");
            };
            let config = work.join("switchboard-fanout-sio.toml");
            let toml = format!("{SWITCHBOARD_TOML}{SWITCHBOARD_SIO_TOML}");
            harness::switchboard_serve(binary, &config, &toml, listen)?
        }
        Kind::Nchan => {
            let module = nchan_module().context("the Nchan module is not installed")?;
            let dir = work.join(format!("nchan-{}", listen.port()));
            std::fs::create_dir_all(&dir)?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(&dir, &module, listen))
                .with_context(|| format!("writing {}", conf.display()))?;
            vec![
                "nginx".into(),
                "-p".into(),
                dir.clone().into(),
                "-e".into(),
                dir.join("error.log").into(),
                "-c".into(),
                conf.into(),
            ]
        }
        Kind::Raw => vec![
            std::env::current_exe()
                .context("locating this executable")?
                .into(),
            "fanout-raw".into(),
            "--listen".into(),
            listen.to_string().into(),
        ],
        Kind::Socketio => vec![
            "node".into(),
            peer_dir("socketio").join("server.js").into(),
            "--listen".into(),
            listen.to_string().into(),
        ],
    })
}

/// What each server is, for the report: `(server, version)`.
pub fn versions(kinds: &[Kind], switchboard: Option<&Path>) -> Vec<(String, String)> {
    kinds
        .iter()
        .map(|kind| {
            let version = match kind {
                Kind::Switchboard => switchboard.map_or_else(|| "unknown".into(), built_version),
                Kind::SwitchboardSio => format!(
                    "{}, Socket.IO endpoint",
                    switchboard.map_or_else(|| "unknown".into(), built_version)
                ),
                Kind::Nchan => format!(
                    "{}, Nchan {}",
                    first_line("nginx", &["-v"]).unwrap_or_else(|| "nginx not found".into()),
                    first_line(
                        "dpkg-query",
                        &["-W", "-f", "${Version}", "libnginx-mod-nchan"]
                    )
                    .unwrap_or_else(|| "unknown".into())
                ),
                Kind::Raw => {
                    "one thread, non-blocking write(2) of the same bytes to every plain TCP \
                     socket (no WebSocket)"
                        .into()
                }
                Kind::Socketio => {
                    let package = peer_dir("socketio").join("node_modules/socket.io/package.json");
                    let socketio = std::fs::read_to_string(package)
                        .ok()
                        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                        .and_then(|v| v["version"].as_str().map(str::to_string))
                        .unwrap_or_else(|| "not installed".into());
                    format!(
                        "socket.io {socketio} on Node {}",
                        first_line("node", &["--version"]).unwrap_or_default()
                    )
                }
            };
            (kind.name().to_string(), version)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switchboard_config_has_the_bench_namespace() {
        // `switchboard checkconfig` validates the keys before every run; this checks the values.
        for line in [
            "[channels.namespaces.bench]",
            "allow_publish = true",
            "history_size = 100",
            "history_ttl = \"60s\"",
            "queue_bytes = 1048576",
        ] {
            assert!(SWITCHBOARD_TOML.lines().any(|l| l == line), "{line}");
        }
    }

    #[test]
    fn nginx_conf_names_the_locations() {
        let conf = nginx_conf(
            Path::new("/tmp/x"),
            "/usr/lib/nginx/modules/ngx_nchan_module.so",
            "127.0.0.1:9000".parse().unwrap(),
        );
        assert!(conf.contains("listen 127.0.0.1:9000 backlog=1024;"));
        assert!(conf.contains("nchan_subscriber websocket;"));
        assert!(conf.contains("nchan_publisher http;"));
        assert!(conf.contains("worker_connections 20000;"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }
}
