//! The operator's console: a live web page for the cluster at `/admin/` on the API listener (never
//! the client listener), off unless `[admin] enabled`. See docs/console.md.
//!
//! - [`config`]: the `[admin]` settings.
//! - [`auth`]: password hashes (Argon2), server-side sessions, the login rate limit, the CSRF rule.
//! - [`stats`]: the node's counters once a second, 15 minutes of them, and the cost per transport.
//! - [`routes`]: the page, login, the live stream, the channel views and the actions, which call
//!   the server API's own methods (`switchboard_api::call_method`), so they act cluster-wide.
//! - [`assets`]: the page, built into the binary.

pub mod assets;
pub mod auth;
pub mod config;
pub mod routes;
pub mod stats;

use std::sync::Arc;

use axum::Router;
use switchboard_auth::{KeyError, Verifier};
use switchboard_hub::Node;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::AdminConfig;
pub use stats::Traffic;

/// Builds the console of `node` and starts its once-a-second sampler (until `shutdown`); its
/// routes, to merge into the API listener's, and the request counter to put on the client
/// listener's.
pub fn start(
    config: &crate::Config,
    node: &Arc<Node>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<(Router, Arc<Traffic>), KeyError> {
    let verifier = if config.auth.has_keys() {
        Some(Verifier::new(&config.auth)?)
    } else {
        None
    };
    let fallback = config
        .fallback
        .enabled
        .then_some(config.fallback.path.as_str());
    let traffic = Arc::new(Traffic::new(&config.websocket_path, fallback));
    let stats = Arc::new(stats::Stats::default());
    let (tick, ticks) = tokio::sync::watch::channel(0u64);
    tracker.spawn(stats::sample(
        Arc::clone(node),
        Arc::clone(&traffic),
        Arc::clone(&stats),
        move || tick.send_modify(|n| *n += 1),
        shutdown.clone(),
    ));
    let console = routes::Console::new(
        Arc::clone(node),
        config.admin.clone(),
        verifier,
        config.api.max_body_bytes,
        stats,
        ticks,
        shutdown.clone(),
    );
    Ok((routes::router(Arc::new(console)), traffic))
}

/// `router` with every request of a transport counted in `traffic`, with its head's bytes and its
/// answer's (for the cost view). Other requests pass untouched.
pub fn count_requests(router: Router, traffic: Arc<Traffic>) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let traffic = Arc::clone(&traffic);
            async move {
                let Some(slot) = traffic.classify(req.method(), req.uri()) else {
                    return next.run(req).await;
                };
                let (parts, body) = req.into_parts();
                traffic.count(slot, stats::request_head_bytes(&parts));
                let resp = next
                    .run(axum::extract::Request::from_parts(parts, body))
                    .await;
                traffic.answered(
                    slot,
                    stats::response_head_bytes(resp.status(), resp.headers()),
                );
                resp
            }
        },
    ))
}
