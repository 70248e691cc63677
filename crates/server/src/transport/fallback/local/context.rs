//! What a request against a session of this node needs: the settings, the node, the sessions.

use std::sync::Arc;

use axum::body::Bytes;
use switchboard_hub::Node;

use super::super::config::FallbackConfig;
use super::super::error::FallbackError;
use super::super::params::Params;
use super::super::session::{HttpSession, SessionEnv};

/// The local side of the fallback: every request that runs against a session held here, whether
/// it arrived here or was relayed from another node, runs with this.
#[derive(Clone, Debug)]
pub struct Local {
    /// `[fallback]`.
    pub config: Arc<FallbackConfig>,
    /// This node.
    pub node: Arc<Node>,
    /// The sessions and what their tasks need.
    pub env: SessionEnv,
}

impl Local {
    /// The session a request names.
    pub fn session(&self, params: &Params<'_>) -> Result<Arc<HttpSession>, FallbackError> {
        params
            .get("session")
            .and_then(|token| self.env.sessions.find(token))
            .ok_or_else(|| self.gone())
    }

    /// What a request for a session that is not (or no longer) here answers.
    pub fn gone(&self) -> FallbackError {
        FallbackError::UnknownSession(self.config.path.clone())
    }

    /// Counts upstream bytes for `/metrics`. The three fallbacks send commands the same way, so
    /// they share one label: `http`.
    pub fn count_in(&self, body: &Bytes) {
        self.node
            .metrics()
            .bytes("http", "in")
            .inc_by(body.len() as u64);
    }
}
