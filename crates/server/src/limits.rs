//! Limits against abuse at the door: client connections in total and per address, and how fast one
//! address may open them.
//!
//! A "client connection" is what holds server state for a client: a WebSocket connection or an HTTP
//! fallback session. Each holds a [`Permit`] for its whole life; the counts drop when it ends. Refusals
//! are answered before any client state exists, with a status and a one-line reason: 503 when the
//! server is full, 429 when one address asks for more than its share (both with `Retry-After`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The `[limits]` section. Zero turns a limit off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client connections (WebSocket connections and fallback sessions) this node holds at most.
    pub max_connections: usize,
    /// Client connections one IP address may hold at once. Mind clients behind one NAT or proxy.
    pub max_connections_per_ip: usize,
    /// New client connections one IP address may open per second (bursts of twice that pass), which
    /// bounds reconnect storms and handshake floods from one source.
    pub handshakes_per_ip_per_second: u32,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds `max_connections`.
    Full,
    /// This address holds `max_connections_per_ip`.
    PerIp,
    /// This address opens connections faster than `handshakes_per_ip_per_second`.
    Rate,
}

impl Refusal {
    /// 503 when the server is full, 429 when one address asks too much.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Full => StatusCode::SERVICE_UNAVAILABLE,
            Self::PerIp | Self::Rate => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Seconds to wait before trying again, for `Retry-After`.
    pub fn retry_after(self) -> &'static str {
        match self {
            Self::Full | Self::PerIp => "5",
            Self::Rate => "1",
        }
    }

    /// The reason, one line.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Full => "too many connections: this server is full, retry later\n",
            Self::PerIp => "too many connections from your address\n",
            Self::Rate => "connecting too fast from your address, retry later\n",
        }
    }

    /// The HTTP answer: the status with `Retry-After` and the reason.
    pub fn response(self) -> Response {
        let mut r = Response::new(Body::from(self.reason()));
        *r.status_mut() = self.status();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(self.retry_after()),
        );
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}

/// The counts behind the limits, shared by every endpoint of the node.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, PerIp>,
}

#[derive(Debug)]
struct PerIp {
    open: usize,
    /// Token bucket for the handshake rate: tokens left and when they were counted.
    tokens: f64,
    at: Instant,
}

/// One admitted client connection; the counts go down when it is dropped.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limits.state.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(e) = s.per_ip.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

impl Limits {
    /// Limits as configured.
    pub fn new(config: LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State::default()),
        })
    }

    /// Admits a new client connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let c = &self.config;
        let mut s = self.state.lock();
        if c.max_connections > 0 && s.total >= c.max_connections {
            return Err(Refusal::Full);
        }
        let now = Instant::now();
        let burst = f64::from(c.handshakes_per_ip_per_second) * 2.0;
        let entry = s.per_ip.entry(ip).or_insert(PerIp {
            open: 0,
            tokens: burst,
            at: now,
        });
        if c.max_connections_per_ip > 0 && entry.open >= c.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        if c.handshakes_per_ip_per_second > 0 {
            let refill = now.duration_since(entry.at).as_secs_f64()
                * f64::from(c.handshakes_per_ip_per_second);
            entry.tokens = (entry.tokens + refill).min(burst);
            entry.at = now;
            if entry.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        s.total += 1;
        Ok(Permit {
            limits: Arc::clone(self),
            ip,
        })
    }

    /// Forgets addresses with nothing open and a full bucket, so the table does not grow with every
    /// address ever seen. The server calls this every second.
    pub fn sweep(&self) {
        let burst = f64::from(self.config.handshakes_per_ip_per_second) * 2.0;
        let rate = f64::from(self.config.handshakes_per_ip_per_second);
        let now = Instant::now();
        self.state.lock().per_ip.retain(|_, e| {
            let tokens = e.tokens + now.duration_since(e.at).as_secs_f64() * rate;
            e.open > 0 || tokens < burst
        });
    }

    /// Client connections held now.
    pub fn open(&self) -> usize {
        self.state.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn total_and_per_ip_counts_go_down_when_permits_drop() {
        let limits = Limits::new(LimitsConfig {
            max_connections: 3,
            max_connections_per_ip: 2,
            handshakes_per_ip_per_second: 0,
        });
        let a1 = limits.admit(ip(1)).unwrap();
        let _a2 = limits.admit(ip(1)).unwrap();
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refusal::PerIp);
        let _b1 = limits.admit(ip(2)).unwrap();
        assert_eq!(limits.admit(ip(3)).unwrap_err(), Refusal::Full);
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.admit(ip(1)).unwrap();
    }

    #[test]
    fn the_rate_allows_a_burst_of_twice_the_rate_then_refuses() {
        let limits = Limits::new(LimitsConfig {
            handshakes_per_ip_per_second: 5,
            ..LimitsConfig::default()
        });
        let permits: Vec<_> = (0..10).map(|_| limits.admit(ip(1)).unwrap()).collect();
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refusal::Rate);
        // Another address has its own bucket.
        assert!(limits.admit(ip(2)).is_ok());
        drop(permits);
        limits.sweep();
        // Nothing is open, but neither bucket has filled up again: both are remembered.
        assert_eq!(limits.state.lock().per_ip.len(), 2);
    }

    #[test]
    fn off_by_default() {
        let limits = Limits::new(LimitsConfig::default());
        let permits: Vec<_> = (0..1000).map(|_| limits.admit(ip(1)).unwrap()).collect();
        assert_eq!(limits.open(), 1000);
        drop(permits);
        limits.sweep();
        assert!(limits.state.lock().per_ip.is_empty());
    }
}
