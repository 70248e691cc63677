//! Channel streams on JetStream: publish (offset by compare-and-set, see the crate docs), read,
//! remove; and the streams themselves, made on first use.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::header::{
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_EXPECTED_STREAM, NATS_MESSAGE_ID,
};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use switchboard_engine::codec as shared;
use switchboard_engine::{EngineError, History, HistoryQuery, StreamOptions, new_epoch};
use switchboard_protocol::{Publication, StreamPosition};

use crate::subjects::{Subjects, token};
use crate::{Inner, NatsStorage, broker, codec};

/// How long a node trusts the last position it wrote to a channel before reading it again: long
/// enough for a busy channel to skip the read, short enough that a stream lost and made again
/// meanwhile is noticed (the position is also forgotten on every reconnect).
const TRUST_LAST_FOR: Duration = Duration::from_secs(1);

/// Attempts of one publish against concurrent publishers on other nodes.
const MAX_ATTEMPTS: usize = 64;

/// What a node knows of one channel's stream.
#[derive(Default)]
pub(crate) struct ChannelState {
    /// The last message this node wrote or read: (stream sequence, offset, epoch, when, generation).
    last: Option<(u64, u64, String, Instant, u64)>,
    /// The highest offset this node has seen in an epoch: a stream showing a lower one in the same
    /// epoch lost messages, and must start a new epoch.
    seen: Option<(String, u64)>,
}

/// Per channel: a lock (this node's publishes to a channel take turns) and what it knows.
#[derive(Default)]
pub(crate) struct Lasts {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ChannelState>>>>,
    /// Bumped to forget every remembered position at once (a reconnect).
    generation: AtomicU64,
}

impl Lasts {
    fn slot(&self, channel: &str) -> Arc<tokio::sync::Mutex<ChannelState>> {
        let mut map = self.map.lock();
        if map.len() > 10_000 {
            // Keep the channels in use; the others are read again when next published to.
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        Arc::clone(map.entry(channel.to_owned()).or_default())
    }

    /// Forgets every remembered position (not the offsets seen).
    pub(crate) fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The last message of a channel's subject.
#[derive(Debug, Clone)]
struct Last {
    sequence: u64,
    offset: u64,
    epoch: String,
}

impl ChannelState {
    fn trusted(&self, lasts: &Lasts) -> Option<Last> {
        let generation = lasts.generation.load(Ordering::Acquire);
        match &self.last {
            Some((sequence, offset, epoch, at, g))
                if *g == generation && at.elapsed() < TRUST_LAST_FOR =>
            {
                Some(Last {
                    sequence: *sequence,
                    offset: *offset,
                    epoch: epoch.clone(),
                })
            }
            _ => None,
        }
    }

    fn remember(&mut self, lasts: &Lasts, last: &Last) {
        let generation = lasts.generation.load(Ordering::Acquire);
        self.last = Some((
            last.sequence,
            last.offset,
            last.epoch.clone(),
            Instant::now(),
            generation,
        ));
        self.see(last);
    }

    fn see(&mut self, last: &Last) {
        match &mut self.seen {
            Some((e, o)) if *e == last.epoch => *o = (*o).max(last.offset),
            _ => self.seen = Some((last.epoch.clone(), last.offset)),
        }
    }

    /// Whether `last` is behind what this node saw in the same epoch: messages were lost.
    fn lost(&self, last: &Last) -> bool {
        matches!(&self.seen, Some((e, o)) if *e == last.epoch && last.offset < *o)
    }
}

fn storage(inner: &Inner) -> stream::StorageType {
    match inner.config.storage {
        NatsStorage::File => stream::StorageType::File,
        NatsStorage::Memory => stream::StorageType::Memory,
    }
}

/// A stream this node made sure of (it exists and serves) on one connection to NATS.
///
/// nats-server 2.9 registers a stream before its store exists, and a request that reads or changes
/// the store (a message get, a consumer, a purge, an update) reaching it meanwhile dereferences the
/// missing store: the server dies. After a restart that lost the streams, every node makes them
/// again at once, so a node must not send such a request to a stream before it saw that stream
/// serve, nor on a later connection than the one it saw it on (the server may have restarted since,
/// and another node may be making the stream again): see [`ensure_stream`] and [`Known::check`].
/// The server's NATS fault test found this: the server died after the restart, and no node became
/// ready again.
#[derive(Clone, Debug)]
pub(crate) struct Known {
    /// The stream, as the lookup found it.
    pub(crate) stream: Stream,
    /// The client's count of connections when this node made sure of the stream.
    connection: u64,
}

impl Known {
    /// Whether requests on the stream's store may go out: still on the connection it was made sure
    /// on. Call right before each such request ([`ensure_stream`] makes sure of it again).
    pub(crate) fn check(&self, inner: &Inner) -> Result<(), EngineError> {
        inner.connected()?;
        if inner.connection() != self.connection {
            return Err(EngineError::Unavailable(format!(
                "NATS at {} reconnected meanwhile: streams are looked up again",
                inner.name
            )));
        }
        Ok(())
    }
}

/// The stream named `name`, made with `config` if it does not exist; when `fix` says the existing
/// stream's settings are not what they must be, they are updated. Known on this connection: from
/// memory; otherwise looked up or made (requests nats-server answers safely whatever the state of
/// the stream) and then made sure of (see [`Known`]) before anything else touches it.
pub(crate) async fn ensure_stream(
    inner: &Inner,
    config: stream::Config,
    fix: impl Fn(&stream::Config) -> bool,
) -> Result<Known, EngineError> {
    let name = config.name.clone();
    // Read before the requests: a reconnect during them leaves the stream to be made sure of again.
    let connection = inner.connection();
    if let Some(k) = inner.streams.lock().get(&name)
        && k.connection == connection
        && !fix(&k.stream.cached_info().config)
    {
        return Ok(k.clone());
    }
    inner.connected()?;
    let mut s = inner
        .js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| inner.error(&format!("stream {name}"), e))?;
    let filter = config.subjects.first().cloned().unwrap_or_default();
    serving(inner, &name, &filter).await?;
    if fix(&s.cached_info().config) {
        inner
            .js
            .update_stream(config)
            .await
            .map_err(|e| inner.error(&format!("updating stream {name}"), e))?;
        s = inner
            .js
            .get_stream(&name)
            .await
            .map_err(|e| inner.error(&format!("stream {name}"), e))?;
    }
    let known = Known {
        stream: s,
        connection,
    };
    inner.streams.lock().insert(name, known.clone());
    Ok(known)
}

/// Waits (up to `command_timeout`) until the stream `name`, whose subjects `filter` names, takes
/// publications: it subscribes to its subjects only once its store exists. Asked with a
/// publication that the stream refuses (it expects another stream), so nothing is stored.
async fn serving(inner: &Inner, name: &str, filter: &str) -> Result<(), EngineError> {
    // No channel or client token starts with `_` (see `subjects::token`).
    let subject = filter.replace(['*', '>'], "_");
    let mut headers = async_nats::HeaderMap::new();
    // A dot is never in a stream name.
    headers.insert(NATS_EXPECTED_STREAM, "not.this.stream");
    let deadline = Instant::now() + inner.config.command_timeout;
    loop {
        let answer = match inner
            .js
            .publish_with_headers(subject.clone(), headers.clone(), Bytes::new())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match answer {
            // Nobody takes the subject yet: the stream is still being made.
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                if Instant::now() >= deadline {
                    return Err(inner.error(&format!("stream {name}"), "made, but does not serve"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                ) =>
            {
                return Err(inner.error(&format!("stream {name}"), e));
            }
            // The stream answered (refusing the publication): it serves.
            _ => return Ok(()),
        }
    }
}

/// Forgets a stream that turned out to be gone (the server lost it): the next use makes it again.
pub(crate) fn forget_stream(inner: &Inner, name: &str) {
    inner.streams.lock().remove(name);
}

/// The stream of `opts`'s history setting; with `window`, deduplicating over it.
async fn history_stream(
    inner: &Inner,
    opts: &StreamOptions,
    window: Option<Duration>,
) -> Result<Known, EngineError> {
    let set = Subjects::set(opts);
    let s = &inner.subjects;
    let max_age = opts.history_meta_ttl.max(opts.history_ttl);
    // JetStream refuses a deduplication window longer than the stream's maximum age; keys cannot
    // outlive the publications anyway.
    let window = window.map(|w| w.min(max_age));
    let config = stream::Config {
        name: s.history_stream(&set),
        subjects: vec![s.history_filter(&set)],
        max_messages_per_subject: i64::try_from(opts.history_size).unwrap_or(i64::MAX),
        max_age,
        storage: storage(inner),
        num_replicas: inner.config.replicas,
        duplicate_window: window.unwrap_or_default(),
        republish: Some(stream::Republish {
            source: s.history_filter(&set),
            destination: s.republish_destination(),
            headers_only: false,
        }),
        ..Default::default()
    };
    ensure_stream(inner, config, |c| {
        window.is_some_and(|w| c.duplicate_window != w)
    })
    .await
}

/// The last message of `subject`, `None` when it has none. Makes the stream again when it is gone,
/// and makes sure of it again after a reconnect.
async fn fetch_last(
    inner: &Inner,
    stream: &mut Known,
    opts: &StreamOptions,
    subject: &str,
) -> Result<Option<Last>, EngineError> {
    for _ in 0..2 {
        if stream.check(inner).is_err() {
            *stream = history_stream(inner, opts, None).await?;
            stream.check(inner)?;
        }
        match stream.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => {
                let (_, offset, epoch) = codec::position(Some(&m.headers))?;
                if epoch.is_empty() {
                    return Err(EngineError::Unavailable(format!(
                        "unreadable data in NATS: a message on {subject} without an epoch"
                    )));
                }
                return Ok(Some(Last {
                    sequence: m.sequence,
                    offset,
                    epoch,
                }));
            }
            Err(e) => match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                LastRawMessageErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    forget_stream(inner, &stream.stream.cached_info().config.name);
                    *stream = history_stream(inner, opts, None).await?;
                }
                _ => return Err(inner.error("reading history", e)),
            },
        }
    }
    Err(inner.error("reading history", "the stream disappears as it is made"))
}

/// The message identifier deduplicating `key` in `channel`.
fn message_id(channel: &str, key: &str) -> String {
    format!("{}:{}", token(channel), token(key))
}

/// Publishes `publication` to `channel`: stored and then republished to every node subscribed
/// (when `opts` keeps history), or sent to them directly. With `idempotency = Some((key,
/// window))`, a publish with the same key within the window returns the first one's position.
pub(crate) async fn publish(
    inner: &Inner,
    channel: &str,
    publication: &Publication,
    opts: &StreamOptions,
    idempotency: Option<(&str, Duration)>,
) -> Result<StreamPosition, EngineError> {
    let body = codec::body(shared::encode_publication(publication))?;
    if !opts.keeps_history() {
        if let Some((key, window)) = idempotency
            && published_before(inner, channel, key, window).await?
        {
            return Ok(StreamPosition::default());
        }
        broker::publish_live(inner, channel, body).await?;
        return Ok(StreamPosition::default());
    }
    inner.connected()?;
    let subject = inner.subjects.history(&Subjects::set(opts), channel);
    let mut stream = history_stream(inner, opts, idempotency.map(|(_, w)| w)).await?;
    let slot = inner.lasts.slot(channel);
    let mut state = slot.lock().await;
    for attempt in 0..MAX_ATTEMPTS {
        let known = match state.trusted(&inner.lasts) {
            Some(last) => Some(last),
            None => fetch_last(inner, &mut stream, opts, &subject).await?,
        };
        let (offset, epoch, expected) = match known {
            Some(l) if !state.lost(&l) => (l.offset + 1, l.epoch, l.sequence),
            Some(l) => {
                tracing::warn!(channel, epoch = %l.epoch, "NATS lost publications of this channel: a new epoch");
                (1, new_epoch(), l.sequence)
            }
            None => (1, new_epoch(), 0),
        };
        let mut headers = codec::publication_headers(offset, &epoch, false);
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        if let Some((key, _)) = idempotency {
            headers.insert(NATS_MESSAGE_ID, message_id(channel, key));
        }
        let acked = match inner
            .js
            .publish_with_headers(subject.clone(), headers, body.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        state.last = None;
        match acked {
            Ok(ack) if ack.duplicate => {
                drop(state);
                return position_of(inner, &mut stream, opts, &subject, ack.sequence).await;
            }
            Ok(ack) => {
                let last = Last {
                    sequence: ack.sequence,
                    offset,
                    epoch: epoch.clone(),
                };
                state.remember(&inner.lasts, &last);
                return Ok(StreamPosition { offset, epoch });
            }
            Err(e) => match e.kind() {
                PublishErrorKind::WrongLastSequence => {
                    // Another node published first: read again. Back off a little when it keeps
                    // happening, so that the publishers do not keep colliding.
                    if attempt > 4 {
                        let ms = fastrand::u64(0..(attempt as u64).min(20));
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
                PublishErrorKind::StreamNotFound => {
                    // Nothing captured it: not stored. The stream is gone; make it again.
                    forget_stream(inner, &stream.stream.cached_info().config.name);
                    stream = history_stream(inner, opts, idempotency.map(|(_, w)| w)).await?;
                }
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                    return Err(EngineError::UnknownOutcome(format!(
                        "NATS at {} did not confirm the publish ({e}): the outcome is unknown, it \
                         may still be applied; retry with the same idempotency_key so that it is \
                         not applied twice",
                        inner.name
                    )));
                }
                _ => return Err(inner.error("publish", e)),
            },
        }
    }
    Err(EngineError::Unavailable(format!(
        "publish to {channel:?}: {MAX_ATTEMPTS} attempts lost to concurrent publishers"
    )))
}

/// The position of the message at `sequence` (the first publish of a repeated idempotency key).
/// When it is gone already (pushed out by `history_size` newer ones), the channel's latest.
async fn position_of(
    inner: &Inner,
    stream: &mut Known,
    opts: &StreamOptions,
    subject: &str,
    sequence: u64,
) -> Result<StreamPosition, EngineError> {
    stream.check(inner)?;
    match stream.stream.get_raw_message(sequence).await {
        Ok(m) => {
            let (_, offset, epoch) = codec::position(Some(&m.headers))?;
            Ok(StreamPosition { offset, epoch })
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
            Ok(fetch_last(inner, stream, opts, subject)
                .await?
                .map(|l| StreamPosition {
                    offset: l.offset,
                    epoch: l.epoch,
                })
                .unwrap_or_default())
        }
        Err(e) => Err(inner.error("reading history", e)),
    }
}

/// For a publication without history: whether `key` was used in `channel` within `window`
/// (JetStream's deduplication on a stream of its own, `P_IDEM`); records it if not.
async fn published_before(
    inner: &Inner,
    channel: &str,
    key: &str,
    window: Duration,
) -> Result<bool, EngineError> {
    let s = &inner.subjects;
    let window = window.max(Duration::from_millis(100));
    let config = stream::Config {
        name: s.idempotency_stream(),
        subjects: vec![s.idempotency_filter()],
        max_messages_per_subject: 1,
        max_age: window,
        duplicate_window: window,
        storage: storage(inner),
        num_replicas: inner.config.replicas,
        ..Default::default()
    };
    for _ in 0..2 {
        let stream = ensure_stream(inner, config.clone(), |c| c.duplicate_window != window).await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, message_id(channel, key));
        let acked = match inner
            .js
            .publish_with_headers(s.idempotency(channel), headers, Bytes::new())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => return Ok(ack.duplicate),
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                forget_stream(inner, &stream.stream.cached_info().config.name);
            }
            Err(e) => return Err(inner.error("idempotency key", e)),
        }
    }
    Err(inner.error("idempotency key", "the stream disappears as it is made"))
}

/// Reads `channel`'s stream, starting it (a new epoch, marked by a message at offset 0) when it has
/// no message.
pub(crate) async fn read(
    inner: &Inner,
    channel: &str,
    query: &HistoryQuery,
    opts: &StreamOptions,
) -> Result<History, EngineError> {
    inner.connected()?;
    if !opts.keeps_history() {
        return Ok(History {
            publications: Vec::new(),
            position: StreamPosition::default(),
        });
    }
    let subject = inner.subjects.history(&Subjects::set(opts), channel);
    let mut stream = history_stream(inner, opts, None).await?;
    let slot = inner.lasts.slot(channel);
    let mut state = slot.lock().await;
    let mut attempts = 0;
    let last = loop {
        attempts += 1;
        if attempts > MAX_ATTEMPTS {
            return Err(EngineError::Unavailable(format!(
                "history of {channel:?}: {MAX_ATTEMPTS} attempts lost to concurrent writers"
            )));
        }
        let found = fetch_last(inner, &mut stream, opts, &subject).await?;
        let expected = match found {
            Some(l) if !state.lost(&l) => break l,
            Some(l) => l.sequence,
            None => 0,
        };
        let epoch = new_epoch();
        let mut headers = codec::publication_headers(0, &epoch, true);
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        let acked = match inner
            .js
            .publish_with_headers(subject.clone(), headers, Bytes::from_static(b"{}"))
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => {
                break Last {
                    sequence: ack.sequence,
                    offset: 0,
                    epoch,
                };
            }
            Err(e) => match e.kind() {
                // Someone wrote meanwhile: read what they wrote.
                PublishErrorKind::WrongLastSequence => {}
                PublishErrorKind::StreamNotFound => {
                    forget_stream(inner, &stream.stream.cached_info().config.name);
                    stream = history_stream(inner, opts, None).await?;
                }
                _ => return Err(inner.error("starting a stream", e)),
            },
        }
    };
    state.see(&last);
    drop(state);
    let position = StreamPosition {
        offset: last.offset,
        epoch: last.epoch,
    };
    if query.limit == Some(0) || !query.wants(last.offset) {
        return Ok(History {
            publications: Vec::new(),
            position,
        });
    }
    // The server leaves out what is older than the ttl (it keeps it until the meta ttl); a ttl
    // reaching before the calendar begins reads everything.
    let deliver = time::OffsetDateTime::now_utc()
        .checked_sub(time::Duration::try_from(opts.history_ttl).unwrap_or(time::Duration::MAX))
        .map_or(DeliverPolicy::All, |start_time| {
            DeliverPolicy::ByStartTime { start_time }
        });
    let messages = consume(inner, &stream, subject, deliver).await?;
    let mut publications = Vec::new();
    for m in messages {
        let (kind, offset, epoch) = codec::position(m.headers.as_ref())?;
        if kind != b'p'
            || epoch != position.epoch
            || !query.wants(offset)
            || offset > position.offset
        {
            continue;
        }
        let p = shared::decode_publication(&m.payload, offset).map_err(codec::unreadable)?;
        publications.push(Arc::new(p));
    }
    Ok(History {
        publications: query.select(publications),
        position,
    })
}

/// Every message of `stream` matching `filter` from `deliver` on, read through a consumer made for
/// this read (and deleted after it).
pub(crate) async fn consume(
    inner: &Inner,
    stream: &Known,
    filter: String,
    deliver: DeliverPolicy,
) -> Result<Vec<jetstream::Message>, EngineError> {
    stream.check(inner)?;
    let stream = &stream.stream;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter,
            deliver_policy: deliver,
            ack_policy: AckPolicy::None,
            // Deleted after the read; this is for a node that died meanwhile.
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| inner.error("reading a stream", e))?;
    let pending = usize::try_from(consumer.cached_info().num_pending).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(pending.min(4096));
    let mut result = Ok(());
    if pending > 0 {
        match consumer
            .fetch()
            .max_messages(pending)
            .expires(inner.config.command_timeout)
            .messages()
            .await
        {
            Ok(mut batch) => {
                while let Some(m) = batch.next().await {
                    match m {
                        Ok(m) => out.push(m),
                        Err(e) => {
                            result = Err(inner.error("reading a stream", e));
                            break;
                        }
                    }
                }
            }
            Err(e) => result = Err(inner.error("reading a stream", e)),
        }
    }
    let name = consumer.cached_info().name.clone();
    let stream = stream.clone();
    tokio::spawn(async move {
        let _ = stream.delete_consumer(&name).await;
    });
    result.map(|()| out)
}

/// Drops `channel`'s stream in every history setting: the next publication starts a new epoch.
pub(crate) async fn remove(inner: &Inner, channel: &str) -> Result<(), EngineError> {
    inner.connected()?;
    let prefix = inner.subjects.history_stream_prefix();
    let mut names = inner.js.stream_names();
    let mut streams = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| inner.error("listing streams", e))?;
        if let Some(set) = name.strip_prefix(&prefix) {
            streams.push((name.clone(), set.to_owned()));
        }
    }
    let slot = inner.lasts.slot(channel);
    let mut state = slot.lock().await;
    for (name, set) in streams {
        let stream = inner
            .js
            .get_stream_no_info(&name)
            .await
            .map_err(|e| inner.error("remove history", e))?;
        // Listed is not made: another node may be making it again (see `Known`).
        serving(inner, &name, &inner.subjects.history_filter(&set)).await?;
        inner.connected()?;
        stream
            .purge()
            .filter(inner.subjects.history(&set, channel))
            .await
            .map_err(|e| inner.error("remove history", e))?;
    }
    *state = ChannelState::default();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(offset: u64, epoch: &str) -> Last {
        Last {
            sequence: offset * 10,
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn a_remembered_position_is_trusted_briefly_and_forgotten_on_reconnect() {
        let lasts = Lasts::default();
        let mut state = ChannelState::default();
        assert!(state.trusted(&lasts).is_none());
        state.remember(&lasts, &last(3, "e"));
        assert_eq!(state.trusted(&lasts).map(|l| l.offset), Some(3));
        lasts.forget_all();
        assert!(state.trusted(&lasts).is_none());
    }

    #[test]
    fn a_stream_behind_what_was_seen_in_its_epoch_lost_messages() {
        let lasts = Lasts::default();
        let mut state = ChannelState::default();
        state.remember(&lasts, &last(5, "e"));
        assert!(state.lost(&last(4, "e")), "behind: lost");
        assert!(!state.lost(&last(5, "e")));
        assert!(!state.lost(&last(6, "e")));
        assert!(
            !state.lost(&last(1, "other")),
            "another epoch is not a loss"
        );
    }

    #[test]
    fn message_ids_are_per_channel() {
        assert_ne!(message_id("a", "k"), message_id("b", "k"));
        assert_ne!(message_id("a:b", "k"), message_id("a", "b:k"));
    }
}
