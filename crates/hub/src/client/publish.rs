//! `publish` and `rpc`: what a client sends on. A publication passes the namespace's rules (or the
//! publish proxy, which may rewrite it or keep it out of history), then takes the node's one publish
//! road ([`Node::publish_as`], the server API's too: history, idempotency); an RPC goes to the
//! application's RPC handler and back.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_protocol::encode::{PublishResult, RawJson};
use switchboard_protocol::{ErrorCode, Payload, PublishRequest, RpcRequest, single_line};

use super::proxying::raw_json;
use super::state::{Client, Flow};
#[cfg(doc)]
use crate::node::Node;
use crate::node::{PublishError, PublishOptions, Publisher};
use crate::proxy::{self, ProxyEvent};

/// The result of `rpc`.
#[derive(Debug, serde::Serialize)]
struct RpcReply {
    data: RawJson,
}

impl Client {
    /// `publish`: checks the namespace (or asks the publish proxy), then publishes as this client.
    pub(super) async fn publish(&mut self, id: u64, req: PublishRequest) -> Flow {
        let Some(ns) = self.namespace(id, &req.channel) else {
            return Ok(());
        };
        let mut payload = req.payload;
        let mut opts = PublishOptions {
            idempotency_key: req.idempotency_key,
            ..PublishOptions::default()
        };
        if ns.publish_proxy {
            let Some(proxy) = self.proxy_for(ProxyEvent::Publish) else {
                self.error(
                    id,
                    ErrorCode::NotAvailable,
                    "no publish handler is configured",
                );
                return Ok(());
            };
            let (data, b64data) = match &payload {
                Payload::Json(json) => (serde_json::from_slice::<&RawValue>(json).ok(), None),
                Payload::Binary(bytes) => (None, Some(BASE64.encode(bytes))),
            };
            let request = self.request(proxy::PublishRequest {
                channel: &req.channel,
                data,
                b64data,
            });
            match proxy::call::<_, proxy::PublishResult>(
                &*proxy,
                ProxyEvent::Publish,
                &request,
                self.headers(),
                &self.node.metrics,
            )
            .await
            {
                Ok(r) => {
                    if let Some(data) = r.data {
                        payload = Payload::Json(Bytes::from(single_line(data.get()).into_owned()));
                    } else if let Some(b64) = r.b64data {
                        match BASE64.decode(b64) {
                            Ok(bytes) => payload = Payload::Binary(Bytes::from(bytes)),
                            Err(e) => {
                                let message = format!(
                                    "the application's publish handler answered invalid b64data: {e}"
                                );
                                self.error(id, ErrorCode::Internal, &message);
                                return Ok(());
                            }
                        }
                    }
                    opts.skip_history = r.skip_history;
                }
                Err(refusal) => return self.refused(id, refusal),
            }
        } else if !ns.allow_publish {
            self.error(
                id,
                ErrorCode::PermissionDenied,
                "clients may not publish in this namespace",
            );
            return Ok(());
        }
        let publisher = Publisher::Client(&self.info);
        match (self.node)
            .publish_as(publisher, &req.channel, payload, &opts)
            .await
        {
            Ok(pos) => {
                if self.subs.contains_key(&req.channel) {
                    // Its own publication before the reply, as for any subscriber before (a big
                    // channel's fan-out goes on in runtime tasks): waits for its own share only.
                    self.node
                        .hub
                        .settled(&req.channel, self.session.key())
                        .await;
                }
                self.reply(
                    id,
                    "publish",
                    &PublishResult {
                        epoch: (ns.keeps_history() && !opts.skip_history).then_some(pos.epoch),
                        offset: pos.offset,
                    },
                )
            }
            // The namespace was resolved above; should it fail now, the client hears why.
            Err(PublishError::Channel(code)) => self.error(id, code, code.message()),
            Err(PublishError::Engine(e)) => self.engine_error(id, &e),
        }
        Ok(())
    }

    /// `rpc`: the application's RPC handler answers; without one, error 108.
    pub(super) async fn rpc(&mut self, id: u64, req: RpcRequest) -> Flow {
        let Some(proxy) = self.proxy_for(ProxyEvent::Rpc) else {
            self.error(id, ErrorCode::NotAvailable, "no RPC handler is configured");
            return Ok(());
        };
        // The decoder checked `data` is JSON; `null` stands in should it ever not be.
        let null = RawValue::NULL;
        let data = serde_json::from_slice::<&RawValue>(&req.data).unwrap_or(null);
        let request = self.request(proxy::RpcRequest {
            method: &req.method,
            data,
        });
        match proxy::call::<_, proxy::RpcResult>(
            &*proxy,
            ProxyEvent::Rpc,
            &request,
            self.headers(),
            &self.node.metrics,
        )
        .await
        {
            Ok(r) => {
                let data = r
                    .data
                    .as_deref()
                    .map_or_else(|| RawJson(Bytes::from_static(b"null")), raw_json);
                self.reply(id, "rpc", &RpcReply { data });
                Ok(())
            }
            Err(refusal) => self.refused(id, refusal),
        }
    }
}
