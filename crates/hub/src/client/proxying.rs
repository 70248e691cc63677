//! Calling the application's backend on the client's behalf: which proxy handles an event, the
//! request naming the client, and how a refusal is answered. Shared by every command a proxy can
//! decide (connect, subscribe, publish, rpc, refresh, sub_refresh).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_protocol::encode::{self, RawJson};
use switchboard_protocol::{DisconnectCode, single_line};

use super::state::{Client, Flow};
use crate::hub::text;
use crate::proxy::{self, Proxy, ProxyEvent, Refusal};

impl Client {
    /// The proxy for `event`, when one is configured.
    pub(super) fn proxy_for(&self, event: ProxyEvent) -> Option<Arc<dyn Proxy>> {
        self.node
            .proxy
            .as_ref()
            .filter(|p| p.handles(event))
            .map(Arc::clone)
    }

    /// A proxy request on behalf of this client.
    pub(super) fn request<T: serde::Serialize>(&self, event: T) -> proxy::Request<'_, T> {
        proxy::Request {
            client: &self.info.client,
            transport: self.transport,
            protocol: "json",
            user: &self.info.user,
            event,
        }
    }

    /// The handshake headers forwarded with every proxy call of this connection.
    pub(super) fn headers(&self) -> &[(String, String)] {
        self.headers.as_deref().unwrap_or(&[])
    }

    /// Answers a command the backend did not let through.
    pub(super) fn refused(&self, id: u64, refusal: Refusal) -> Flow {
        match refusal {
            Refusal::Error { code, message } => {
                self.session
                    .push(text(encode::error_code(id, code, &message, false)));
                Ok(())
            }
            Refusal::Disconnect { reconnect } => Err(disconnect_code(reconnect)),
            Refusal::Failed(code, message) => {
                self.error(id, code, &message);
                Ok(())
            }
        }
    }
}

/// Raw JSON from the application's handlers, on one line (see [`single_line`]).
pub(super) fn raw_json(raw: &RawValue) -> RawJson {
    RawJson(Bytes::from(single_line(raw.get()).into_owned()))
}

/// The disconnect a backend's `disconnect` answer asks for.
pub(super) fn disconnect_code(reconnect: bool) -> DisconnectCode {
    if reconnect {
        DisconnectCode::Normal
    } else {
        DisconnectCode::ForceDisconnect
    }
}
