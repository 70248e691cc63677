//! What the subscribers, the publisher thread and the measurement of a fan-out run share: the
//! publisher's counts, every subscriber's sequence checks, the latency histograms and the one
//! read buffer of the subscriber loop.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use hdrhistogram::Histogram;

use crate::fanout::wire::{Delivery, Kind};
use crate::load::control::{self, EXIT};
use crate::load::seq::{self, Seen};
use crate::load::setup::Setup;

/// Highest sequence number accepted (a larger one is a parse error, not a publication).
pub(super) const MAX_SEQ: u64 = 100_000_000;
/// Size of the shared read buffer.
pub(super) const SCRATCH: usize = 256 * 1024;

/// What the publisher thread counts.
pub(super) struct Published {
    /// Publications per channel.
    pub(super) published: Vec<AtomicU64>,
    pub(super) sent: AtomicU64,
    pub(super) sent_window: AtomicU64,
    pub(super) reply_errors: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) max_late_us: AtomicU64,
    /// Publish API call times, µs.
    pub(super) call_us: Mutex<Histogram<u64>>,
}

/// What the publisher thread and the subscriber loop share.
pub(super) type Control = control::Control<Published>;

/// What one subscriber saw.
#[derive(Default)]
pub(super) struct SubState {
    pub(super) channel: usize,
    pub(super) subscribed: bool,
    pub(super) last_offset: Option<u64>,
    pub(super) received: u64,
    pub(super) seen: Seen,
    pub(super) offset_gaps: u64,
    pub(super) ended: bool,
}

impl SubState {
    pub(super) fn record(&mut self, d: Delivery) -> Result<()> {
        seq::check(d.seq, MAX_SEQ)?;
        self.received += 1;
        if !self.seen.record(d.seq) {
            return Ok(());
        }
        if let Some(offset) = d.offset {
            if self.last_offset.is_some_and(|last| offset != last + 1) {
                self.offset_gaps += 1;
            }
            self.last_offset = Some(offset);
        }
        Ok(())
    }
}

/// The subscriber side's state (one thread).
pub(super) struct Shared {
    pub(super) kind: Kind,
    pub(super) control: Arc<Control>,
    pub(super) sample_every: usize,
    pub(super) subs: RefCell<Vec<SubState>>,
    pub(super) setup: Setup,
    pub(super) deliveries: Cell<u64>,
    pub(super) deliveries_window: Cell<u64>,
    pub(super) latency_us: RefCell<Histogram<u64>>,
    pub(super) read_latency_us: RefCell<Histogram<u64>>,
    pub(super) stamped: Cell<u64>,
    pub(super) scratch: RefCell<Vec<u8>>,
    pub(super) cmsg: RefCell<Vec<u8>>,
    pub(super) end_reasons: RefCell<BTreeMap<String, usize>>,
}

impl Shared {
    pub(super) fn phase(&self) -> u8 {
        self.control.phase.load(Ordering::Relaxed)
    }

    /// Records why subscriber `id` ended, unless the run is over anyway.
    pub(super) fn ended(&self, id: usize, reason: String) {
        if self.phase() == EXIT {
            return;
        }
        if let Some(s) = self.subs.borrow_mut().get_mut(id) {
            s.ended = true;
        }
        let mut key: String = reason.chars().take(100).collect();
        key = key.replace('|', "/");
        *self.end_reasons.borrow_mut().entry(key).or_default() += 1;
    }
}

/// Publications so far, per channel.
pub(super) fn published(control: &Control) -> Vec<u64> {
    control
        .counts
        .published
        .iter()
        .map(|p| p.load(Ordering::Acquire))
        .collect()
}
