//! What the clients of the transports load generator and its measurement share: the transports,
//! the client side's state ([`Shared`]: counters, deliveries, per-client sequence checks) and the
//! publisher's counts. The clients ([`super::clients`]) and the load generator ([`super::load`])
//! both sit above it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::http::Counters;
use crate::load::control::{self, EXIT, MEASURE};
use crate::load::latency::realtime_ns;
use crate::load::seq::{self, Seen};
use crate::load::setup::Setup;

/// Highest sequence number accepted.
const MAX_SEQ: u64 = 10_000_000;

/// The ways a client can connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// switchboard's JSON protocol over WebSocket.
    Websocket,
    /// switchboard's HTTP fallback, downstream by server-sent events.
    Sse,
    /// switchboard's HTTP fallback, downstream by long polling.
    LongPoll,
    /// switchboard's HTTP fallback, downstream by ajax (short) polling every `--poll-interval`.
    Poll,
    /// Socket.IO 4 forced to Engine.IO's HTTP long-polling.
    SocketioPolling,
}

impl Transport {
    /// All of them, in the order they run and are shown.
    pub const ALL: [Transport; 5] = [
        Transport::Websocket,
        Transport::Sse,
        Transport::LongPoll,
        Transport::Poll,
        Transport::SocketioPolling,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "long-poll",
            Transport::Poll => "poll",
            Transport::SocketioPolling => "socketio-polling",
        }
    }

    /// Whether the server is the Socket.IO peer rather than switchboard.
    pub fn is_socketio(self) -> bool {
        self == Transport::SocketioPolling
    }
}

/// What the publisher thread counts.
pub struct Published {
    pub(super) published: AtomicU64,
    pub(super) published_window: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) publish_us: Mutex<Histogram<u64>>,
}

/// What the publisher thread and the clients share.
pub type Control = control::Control<Published>;

/// A publication failed: counted (whatever failed, it is a publish error here), and kept if it
/// is the first error.
pub(super) fn fail(control: &Control, message: String) {
    control.counts.errors.fetch_add(1, Ordering::Relaxed);
    control.fail(message);
}

/// What one client saw.
#[derive(Default)]
pub(super) struct ClientState {
    pub(super) subscribed: bool,
    pub(super) seen: Seen,
    pub(super) ended: bool,
}

/// The client side's state (one thread).
pub struct Shared {
    /// The clients' transport.
    pub transport: Transport,
    /// The server's client address.
    pub addr: SocketAddr,
    /// The room.
    pub channel: String,
    /// Ajax polling interval.
    pub poll_interval: Duration,
    /// Headers sent with every request.
    pub headers: &'static str,
    /// Bytes and requests of every client socket.
    pub counters: Rc<Counters>,
    /// Shared with the publisher.
    pub control: Arc<Control>,
    pub(super) clients: RefCell<Vec<ClientState>>,
    pub(super) setup: Setup,
    pub(super) deliveries: Cell<u64>,
    pub(super) deliveries_window: Cell<u64>,
    pub(super) latency_us: RefCell<Histogram<u64>>,
    pub(super) end_reasons: RefCell<BTreeMap<String, usize>>,
}

impl Shared {
    /// The current phase.
    pub fn phase(&self) -> u8 {
        self.control.phase.load(Ordering::Relaxed)
    }

    /// Client `id` received publication `seq`, published at `t_ns` (ns since the Unix epoch).
    pub fn deliver(&self, id: usize, seq: u64, t_ns: u64) -> Result<()> {
        seq::check(seq, MAX_SEQ)?;
        self.deliveries.set(self.deliveries.get() + 1);
        if self.phase() == MEASURE {
            self.deliveries_window.set(self.deliveries_window.get() + 1);
            let us = realtime_ns().saturating_sub(t_ns) / 1000;
            self.latency_us.borrow_mut().saturating_record(us.max(1));
        }
        let mut clients = self.clients.borrow_mut();
        let c = clients.get_mut(id).context("no such client")?;
        c.seen.record(seq);
        Ok(())
    }

    /// Records why client `id` ended, unless the run is over anyway.
    pub(super) fn ended(&self, id: usize, reason: &str) {
        if self.phase() == EXIT {
            return;
        }
        if let Some(c) = self.clients.borrow_mut().get_mut(id) {
            c.ended = true;
        }
        let key: String = reason.chars().take(120).collect();
        *self.end_reasons.borrow_mut().entry(key).or_default() += 1;
    }
}
