//! One fan-out run: subscribe everyone, publish through a warm-up and the measured window, drain,
//! and turn what the subscribers and the publisher counted into the [`LoadReport`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::time::TimeSpec;
use tokio::time::sleep;

use super::args::LoadArgs;
use super::nchan::nchan_subscribers;
use super::publisher::publish;
use super::report::LoadReport;
use super::state::{Control, Published, SCRATCH, Shared, SubState, published};
use super::subscriber::{open_subscriber, receive};
use crate::fanout::wire::Kind;
use crate::load::CpuWindow;
use crate::load::latency::{histogram, quantile};
use crate::load::report::{ReportCore, Tally};
use crate::load::setup::Setup;
use crate::procfs;
use crate::tput::Snapshot;

/// Runs the load described by `args` on this (current-thread) runtime.
pub(super) async fn measure(args: &LoadArgs) -> Result<LoadReport> {
    let control = Arc::new(Control::new(Published {
        published: (0..args.channels).map(|_| AtomicU64::new(0)).collect(),
        sent: AtomicU64::new(0),
        sent_window: AtomicU64::new(0),
        reply_errors: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        max_late_us: AtomicU64::new(0),
        call_us: Mutex::new(histogram()?),
    }));
    let shared = Rc::new(Shared {
        kind: args.kind,
        control: Arc::clone(&control),
        sample_every: args.sample_every,
        subs: RefCell::new(
            (0..args.subs)
                .map(|i| SubState {
                    channel: i % args.channels,
                    ..SubState::default()
                })
                .collect(),
        ),
        setup: Setup::new(args.concurrency, args.setup_timeout),
        deliveries: Cell::new(0),
        deliveries_window: Cell::new(0),
        latency_us: RefCell::new(histogram()?),
        read_latency_us: RefCell::new(histogram()?),
        stamped: Cell::new(0),
        scratch: RefCell::new(vec![0; SCRATCH]),
        cmsg: RefCell::new(nix::cmsg_space!(TimeSpec)),
        end_reasons: RefCell::new(BTreeMap::new()),
    });
    let rss = || args.server_pid.map(procfs::rss_kib).transpose();

    // Subscribe everyone.
    let rss_before = rss()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.subs)
        .map(|id| {
            let shared = Rc::clone(&shared);
            let source = Ipv4Addr::new(127, 0, 0, args.source_start + (id / args.per_source) as u8);
            let addr = match args.nodes.len() {
                0 => args.addr,
                k => args.nodes[id % k],
            };
            let channel = id % args.channels;
            tokio::task::spawn_local(async move {
                let opening = open_subscriber(shared.kind, addr, source, id, channel);
                let Some((conn, offset)) = shared
                    .setup
                    .open_or_fail("subscriber", id, source, opening)
                    .await
                else {
                    return;
                };
                {
                    let mut subs = shared.subs.borrow_mut();
                    subs[id].subscribed = true;
                    subs[id].last_offset = offset;
                }
                shared.setup.ready();
                if let Err(e) = receive(id, conn, &shared).await {
                    shared.ended(id, format!("{e:#}"));
                }
            })
        })
        .collect();
    let subscribed = (shared.setup)
        .wait(args.subs, "subscriptions", "subscriber")
        .await?;
    let subscribe_s = started.elapsed().as_secs_f64();
    let server_counted_subs = match args.kind {
        Kind::Nchan | Kind::Raw => Some(nchan_subscribers(args.addr, args.channels).await?),
        _ => None,
    };
    sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_subscribed = rss()?;

    // Publish: warm-up, window, stop.
    let publisher = {
        let (kind, addr) = (args.kind, args.addr);
        let (channels, rate, http_conns) = (args.channels, args.rate, args.http_conns);
        let api = args.api_addr.map(|a| (a, args.api_key.clone()));
        control.spawn_publisher(
            move |control| async move {
                publish(kind, addr, api, channels, rate, http_conns, &control).await
            },
            Control::fail,
        )?
    };
    control.publisher_started().await?;
    sleep(Duration::from_secs_f64(args.warmup)).await;
    let start = Snapshot::take(args.server_pid)?;
    let others_before = others_ticks(&args.other_pids)?;
    let delivered_before = shared.deliveries_window.get();
    control.measure(args.duration).await;
    let end = Snapshot::take(args.server_pid)?;
    let others_after = others_ticks(&args.other_pids)?;
    let deliveries_window = shared.deliveries_window.get() - delivered_before;
    let rss_window = rss()?;

    // Drain: wait until the publisher stopped and every connected subscriber has everything.
    let drain_limit = Duration::from_secs_f64(args.drain);
    let (drained, drain_start) = control
        .drain(drain_limit, || {
            let subs = shared.subs.borrow();
            let published = published(&control);
            subs.iter()
                .filter(|s| s.subscribed && !s.ended)
                .all(|s| s.seen.distinct >= published[s.channel])
        })
        .await;
    let drain_s = drain_start.elapsed().as_secs_f64();
    let rss_end = rss()?;
    control.finish(&tasks, publisher).await;

    let cpu = CpuWindow::new(&start, &end);
    let (seconds, own, server) = (cpu.seconds, cpu.own, cpu.server);
    let others: Vec<u64> = others_before
        .iter()
        .zip(&others_after)
        .map(|(a, b)| b.saturating_sub(*a))
        .collect();
    let others_sum: u64 = others.iter().sum();
    let call_hist = control
        .counts
        .call_us
        .lock()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))?
        .clone();
    let call_quantile = |q: f64| {
        (args.api_addr.is_some() && !call_hist.is_empty()).then(|| call_hist.value_at_quantile(q))
    };
    let published = published(&control);
    let subs = shared.subs.borrow();
    let mut tally = Tally::default();
    let (mut gaps, mut undelivered, mut offset_gaps) = (0, 0, 0);
    for s in subs.iter().filter(|s| s.subscribed) {
        tally.add(published[s.channel], &s.seen);
        gaps += s.seen.max_seq.saturating_sub(s.seen.distinct);
        undelivered += published[s.channel].saturating_sub(s.seen.max_seq);
        offset_gaps += s.offset_gaps;
    }
    let ended = subs.iter().filter(|s| s.ended).count();
    let subs_per_channel = args.subs as f64 / args.channels as f64;
    let published_window = control.counts.sent_window.load(Ordering::Acquire);
    let hist = shared.latency_us.borrow();
    let read_hist = shared.read_latency_us.borrow();
    Ok(LoadReport {
        kind: args.kind,
        subs: args.subs,
        subscribed,
        channels: args.channels,
        server_counted_subs,
        subscribe_s,
        rate: args.rate,
        core: ReportCore {
            seconds,
            published: control.counts.sent.load(Ordering::Acquire),
            published_window,
            publish_errors: control.counts.reply_errors.load(Ordering::Acquire),
            publish_first_error: control.error(),
            deliveries_window,
            deliveries: shared.deliveries.get(),
            client_cpu_pct: cpu.pct(own),
            other_cpu_pct: server.map(|s| {
                cpu.pct((end.machine - start.machine).saturating_sub(own + s + others_sum))
            }),
            rss_before_kib: rss_before,
            rss_window_kib: rss_window,
            drained,
            ended,
            end_reasons: shared.end_reasons.borrow().clone(),
            setup_failures: shared.setup.failed(),
            first_error: shared.setup.first_error(),
            ..ReportCore::received(&tally, &hist)
        },
        publish_acked: (!matches!(args.kind, Kind::Socketio | Kind::SwitchboardSio))
            .then(|| control.counts.acked.load(Ordering::Acquire)),
        publish_max_late_ms: control.counts.max_late_us.load(Ordering::Acquire) as f64 / 1000.0,
        deliveries_per_s: deliveries_window as f64 / seconds,
        offered_per_s: published_window as f64 * subs_per_channel / seconds,
        gaps,
        undelivered,
        offset_gaps,
        latency_p999_us: quantile(&hist, 0.999),
        read_latency_p50_us: quantile(&read_hist, 0.50),
        read_latency_p99_us: quantile(&read_hist, 0.99),
        stamped_reads: shared.stamped.get(),
        server_cpu_pct: server.map(|t| cpu.pct(t)),
        server_core_busy_pct: cpu.pct(end.cores[0] - start.cores[0]),
        client_core_busy_pct: cpu.pct(end.cores[1] - start.cores[1]),
        server_system_pct: start
            .server_system
            .zip(end.server_system)
            .map(|(a, b)| cpu.pct(b - a)),
        server_others_cpu_pct: others.iter().map(|&t| cpu.pct(t)).collect(),
        publish_call_p50_us: call_quantile(0.5),
        publish_call_p99_us: call_quantile(0.99),
        rss_subscribed_kib: rss_subscribed,
        rss_end_kib: rss_end,
        kib_per_sub: rss_before
            .zip(rss_subscribed)
            .map(|(b, a)| (a as f64 - b as f64) / subscribed as f64),
        drain_s,
    })
}

/// CPU ticks so far of each of `pids`.
fn others_ticks(pids: &[u32]) -> Result<Vec<u64>> {
    pids.iter().map(|&pid| procfs::cpu_ticks(pid)).collect()
}
