//! Proxies to the application's backend: client events forwarded as HTTP POSTs.
//!
//! The hub decides *when* to ask the backend (a connect without a token, a subscription in a namespace
//! with `subscribe_proxy`, an `rpc`...) and what the JSON says (docs/proxy.md); this crate carries the
//! call: one URL per event, the client's chosen handshake headers and cookies, a concurrency cap and a
//! timeout, so that a slow or dead backend gives clients a clear error and never stalls the server.
//!
//! ```
//! use switchboard_proxy::{HttpProxy, ProxyConfig};
//!
//! let config: ProxyConfig = serde_json::from_str(r#"{
//!     "connect": "http://127.0.0.1:8000/switchboard/connect",
//!     "rpc": "http://127.0.0.1:8000/switchboard/rpc",
//!     "forward_cookies": ["PHPSESSID"]
//! }"#).unwrap();
//! let proxy = HttpProxy::new(&config).unwrap();
//! # let _ = proxy;
//! ```

mod config;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use switchboard_protocol::proxy::{ForwardedHeaders, Proxy, ProxyError, ProxyEvent, ProxyReply};
use tokio::sync::Semaphore;

pub use config::{ConfigError, ProxyConfig};

/// Most bytes read of a backend's answer; a reply is a small JSON object.
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Forwards events to the backend over HTTP/1.1 with keep-alive connections.
#[derive(Debug)]
pub struct HttpProxy {
    client: reqwest::Client,
    endpoints: [Option<Endpoint>; ProxyEvent::ALL.len()],
    timeout: Duration,
    cap: usize,
    /// Lowercase header names kept from handshakes.
    forward_headers: Vec<String>,
    /// Cookie names kept from the `Cookie` header; `*` keeps all.
    forward_cookies: Vec<String>,
    /// Headers added to every call (e.g. a secret the backend checks).
    extra_headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
struct Endpoint {
    url: reqwest::Url,
    permits: Arc<Semaphore>,
}

impl HttpProxy {
    /// A proxy for the events `config` names.
    pub fn new(config: &ProxyConfig) -> Result<Self, ConfigError> {
        let checked = config.check()?;
        // The whole call is bounded by `timeout` in `call`; this only stops a connect attempt from
        // outliving it.
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        let endpoints = ProxyEvent::ALL.map(|event| {
            checked.urls[index(event)].clone().map(|url| Endpoint {
                url,
                permits: Arc::new(Semaphore::new(config.max_concurrency)),
            })
        });
        Ok(Self {
            client,
            endpoints,
            timeout: config.timeout,
            cap: config.max_concurrency,
            forward_headers: config
                .forward_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            forward_cookies: config.forward_cookies.clone(),
            extra_headers: checked.headers,
        })
    }

    async fn post(
        &self,
        endpoint: &Endpoint,
        event: ProxyEvent,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<ProxyReply, ProxyError> {
        let mut request = self
            .client
            .post(endpoint.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        for (name, value) in &self.extra_headers {
            request = request.header(name, value);
        }
        let mut response = request.send().await.map_err(|e| failed(event, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ProxyError::Failed(format!(
                "{event} handler {} answered {status}",
                endpoint.url
            )));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(event, &e))? {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(ProxyError::BadReply(format!(
                    "{event} reply over {MAX_REPLY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        ProxyReply::parse(&body)
    }
}

#[async_trait]
impl Proxy for HttpProxy {
    fn handles(&self, event: ProxyEvent) -> bool {
        self.endpoints[index(event)].is_some()
    }

    async fn call(
        &self,
        event: ProxyEvent,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<ProxyReply, ProxyError> {
        let Some(endpoint) = &self.endpoints[index(event)] else {
            return Err(ProxyError::Failed(format!(
                "no {event} handler is configured"
            )));
        };
        // Refuse at once rather than queue: waiting for a permit would hold the client (and its
        // memory) for a backend that is already not keeping up.
        let Ok(_permit) = endpoint.permits.try_acquire() else {
            return Err(ProxyError::Overloaded {
                event,
                cap: self.cap,
            });
        };
        match tokio::time::timeout(self.timeout, self.post(endpoint, event, body, headers)).await {
            Ok(reply) => reply,
            Err(_) => Err(ProxyError::Timeout {
                event,
                millis: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    fn forward(&self, headers: &mut dyn Iterator<Item = (&str, &str)>) -> ForwardedHeaders {
        let mut kept = Vec::new();
        let mut cookies = Vec::new();
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("cookie") {
                if !self.forward_cookies.is_empty() {
                    cookies.extend(
                        value
                            .split(';')
                            .map(str::trim)
                            .filter(|c| self.cookie_wanted(c)),
                    );
                }
            } else if self
                .forward_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
            {
                kept.push((name.to_ascii_lowercase(), value.to_owned()));
            }
        }
        if !cookies.is_empty() {
            kept.push(("cookie".to_owned(), cookies.join("; ")));
        }
        kept.into()
    }
}

impl HttpProxy {
    fn cookie_wanted(&self, cookie: &str) -> bool {
        let name = cookie.split_once('=').map_or(cookie, |(n, _)| n).trim();
        !name.is_empty() && self.forward_cookies.iter().any(|c| c == "*" || c == name)
    }
}

fn index(event: ProxyEvent) -> usize {
    match event {
        ProxyEvent::Connect => 0,
        ProxyEvent::Refresh => 1,
        ProxyEvent::Subscribe => 2,
        ProxyEvent::Publish => 3,
        ProxyEvent::Rpc => 4,
        ProxyEvent::SubRefresh => 5,
    }
}

fn failed(event: ProxyEvent, e: &reqwest::Error) -> ProxyError {
    // reqwest's Display omits the cause ("error sending request"); the chain says what happened.
    let mut message = format!("{event} handler: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ProxyError::Failed(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_distinct_slots() {
        let mut seen: Vec<usize> = ProxyEvent::ALL.iter().map(|e| index(*e)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ProxyEvent::ALL.len());
    }

    #[test]
    fn keeps_only_the_headers_and_cookies_asked_for() {
        let config = ProxyConfig {
            connect: Some("http://127.0.0.1:1/c".into()),
            forward_headers: vec!["Authorization".into(), "X-Real-IP".into()],
            forward_cookies: vec!["sid".into()],
            ..ProxyConfig::default()
        };
        let proxy = HttpProxy::new(&config).unwrap();
        let mut headers = [
            ("authorization", "Bearer x"),
            ("user-agent", "test"),
            ("x-real-ip", "10.0.0.1"),
            ("cookie", "theme=dark; sid=abc; other=1"),
            ("Cookie", "sid2=no"),
        ]
        .into_iter();
        let kept = proxy.forward(&mut headers);
        assert_eq!(
            &*kept,
            [
                ("authorization".to_owned(), "Bearer x".to_owned()),
                ("x-real-ip".to_owned(), "10.0.0.1".to_owned()),
                ("cookie".to_owned(), "sid=abc".to_owned()),
            ]
        );
    }

    #[test]
    fn star_keeps_every_cookie() {
        let config = ProxyConfig {
            forward_cookies: vec!["*".into()],
            ..ProxyConfig::default()
        };
        let proxy = HttpProxy::new(&config).unwrap();
        let kept = proxy.forward(&mut [("cookie", "a=1; b=2")].into_iter());
        assert_eq!(&*kept, [("cookie".to_owned(), "a=1; b=2".to_owned())]);
    }
}
