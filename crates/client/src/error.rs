//! What can go wrong, each with what to do about it.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use switchboard_protocol::ErrorCode;

/// An error of the client.
///
/// It is `Clone` because one failure (a refused connect, say) may answer several waiting callers.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server URL cannot be used.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given to [`Client::builder`](crate::Client::builder).
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The WebSocket connection could not be opened, or broke while connecting.
    #[error("cannot connect to {url}: {source}; check that the server runs and listens there")]
    Transport {
        /// The server URL.
        url: String,
        /// The underlying failure.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered a command with an error.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// No reply came in time.
    #[error(
        "no reply to {method} within {timeout:?}: the server is slow or unreachable; try again, or raise the client's timeout"
    )]
    Timeout {
        /// The command.
        method: &'static str,
        /// The client's timeout.
        timeout: Duration,
    },
    /// The connection was lost after the command was sent and before its reply came.
    #[error(
        "the connection was lost before the reply to {method} came: it may or may not have been carried out"
    )]
    Disconnected {
        /// The command.
        method: &'static str,
    },
    /// A command was made before the client ever connected.
    #[error("not connected: call Client::connect first")]
    NotConnected,
    /// The client is closed (by [`Client::close`](crate::Client::close), or by a server that said not
    /// to reconnect); [`Client::state`](crate::Client::state) says why.
    #[error("the client is closed; create a new one to connect again")]
    Closed,
    /// This client already has a [`Subscription`](crate::Subscription) to the channel.
    #[error("already subscribed to {0:?}: use the existing Subscription, or drop it first")]
    AlreadySubscribed(String),
    /// The server sent a reply this client cannot read.
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
}

/// An error answered by the server: a code of docs/protocol.md (100–112), or one of the application's
/// (1000 and above) passed through a proxy.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, thiserror::Error)]
#[error("the server answered error {code}: {message}")]
pub struct ServerError {
    /// The code.
    pub code: u32,
    /// The server's message.
    #[serde(default)]
    pub message: String,
    /// Whether the same command may succeed if sent again later.
    #[serde(default)]
    pub temporary: bool,
}

impl ServerError {
    /// The code as one of the protocol's, or `None` for the application's own codes.
    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == self.code)
    }
}

impl Error {
    /// The server's error code, when the server refused.
    pub fn server_code(&self) -> Option<u32> {
        match self {
            Self::Server(e) => Some(e.code),
            _ => None,
        }
    }

    pub(crate) fn transport(
        url: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Transport {
            url: url.to_owned(),
            source: Arc::new(source),
        }
    }
}
