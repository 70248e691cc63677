//! The protocol state of one client, without IO: which commands wait for which reply, what each
//! subscription has seen, and what to send next. The driver (`driver.rs`) feeds it what arrives and
//! writes what it queues; the unit tests here drive it by hand.

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use switchboard_protocol::{MAX_ID, StreamPosition};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, ServerError};
use crate::types::{Event, Publication, Recovery, SubscribeOptions, Subscribed};
use crate::wire::{Incoming, Push, SubscribeResult, Undecodable, command, decode, parse_frame};

/// Where a reply goes.
pub(crate) type ReplyTx = oneshot::Sender<Result<Box<RawValue>, Error>>;

/// Frames are batched (one object per line) up to about this size: well under the server's default
/// message limit (1 MiB), so batching never turns small commands into a refused frame.
const BATCH_BYTES: usize = 64 << 10;

/// Who waits for the reply to a command.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// A caller of the public API.
    Caller { method: &'static str, tx: ReplyTx },
    /// A subscription being (re)established.
    Subscribe { channel: String, generation: u64 },
    /// Nobody (`unsubscribe`): a failure is only logged.
    Ignore { method: &'static str },
}

/// Commands in flight, by id.
#[derive(Debug)]
pub(crate) struct Pending {
    next_id: u64,
    waiting: HashMap<u64, Waiter>,
    prune_at: usize,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            next_id: 1,
            waiting: HashMap::new(),
            prune_at: 64,
        }
    }
}

impl Pending {
    /// Registers a command and returns its id.
    pub(crate) fn insert(&mut self, waiter: Waiter) -> u64 {
        // Ids must stay within 1..=2^53-1 (they cross JavaScript clients' numbers on the server side).
        let id = self.next_id;
        self.next_id = if id >= MAX_ID { 1 } else { id + 1 };
        if self.waiting.len() >= self.prune_at {
            // Callers time out on their own side and drop their receiver; forget them here, so that
            // a server that never answers cannot grow this map without bound.
            self.waiting.retain(|_, w| match w {
                Waiter::Caller { tx, .. } => !tx.is_closed(),
                _ => true,
            });
            self.prune_at = (self.waiting.len() * 2).max(64);
        }
        self.waiting.insert(id, waiter);
        id
    }

    /// The waiter of reply `id`, if any.
    pub(crate) fn take(&mut self, id: u64) -> Option<Waiter> {
        self.waiting.remove(&id)
    }

    /// Commands in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// The connection is gone: every caller learns that its command's fate is unknown.
    pub(crate) fn fail_all(&mut self) {
        for (_, w) in self.waiting.drain() {
            if let Waiter::Caller { method, tx } = w {
                let _ = tx.send(Err(Error::Disconnected { method }));
            }
        }
    }
}

/// A request made while there was no connection.
#[derive(Debug)]
struct Queued {
    method: &'static str,
    params: Value,
    tx: ReplyTx,
}

/// One subscription of the client.
#[derive(Debug)]
struct Sub {
    /// Tells this subscription from an earlier one to the same channel that was dropped.
    generation: u64,
    events: mpsc::UnboundedSender<Event>,
    options: SubscribeOptions,
    /// The `subscribe` caller, until the first success.
    first: Option<oneshot::Sender<Result<(), Error>>>,
    recoverable: bool,
    /// The stream's epoch and the offset of the last publication delivered.
    position: Option<StreamPosition>,
    status: SubStatus,
}

#[derive(Debug)]
enum SubStatus {
    /// No connection: subscribe when there is one.
    Waiting,
    /// `subscribe` sent; publications that arrive meanwhile wait for its result, which may carry
    /// recovered ones that come first.
    Subscribing {
        buffered: Vec<Result<Publication, Undecodable>>,
    },
    Active,
}

/// How a publication fits the stream seen so far.
enum Order {
    /// The next one.
    Next,
    /// Seen already (a recovered publication that was also in flight).
    Duplicate,
    /// One or more were skipped.
    Gap,
    /// Nothing to check (no history in the namespace).
    Untracked,
}

/// The protocol state (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Session {
    pending: Pending,
    subs: HashMap<String, Sub>,
    queued: Vec<Queued>,
    connected: bool,
    out: Vec<String>,
    disconnect: Option<(u16, String)>,
    /// The `delay` (ms) of the current connection's `disconnect` push.
    reconnect_delay: Option<u64>,
}

impl Session {
    /// A fresh id for a command the driver sends itself (`connect`).
    pub(crate) fn connect_id(&mut self) -> u64 {
        let id = self.pending.insert(Waiter::Ignore { method: "connect" });
        // The driver reads the connect reply itself, before the session sees the connection.
        self.pending.take(id);
        id
    }

    /// Sends a command of the public API now, or when connected.
    pub(crate) fn request(&mut self, method: &'static str, params: Value, tx: ReplyTx) {
        if tx.is_closed() {
            return;
        }
        if self.connected {
            let id = self.pending.insert(Waiter::Caller { method, tx });
            self.out.push(command(id, method, params));
        } else {
            self.queued.retain(|q| !q.tx.is_closed());
            self.queued.push(Queued { method, params, tx });
        }
    }

    /// Adds a subscription; `first` hears of its first `subscribe` result.
    pub(crate) fn subscribe(
        &mut self,
        channel: String,
        generation: u64,
        options: SubscribeOptions,
        events: mpsc::UnboundedSender<Event>,
        first: oneshot::Sender<Result<(), Error>>,
    ) {
        if self.subs.contains_key(&channel) {
            let _ = first.send(Err(Error::AlreadySubscribed(channel)));
            return;
        }
        self.subs.insert(
            channel.clone(),
            Sub {
                generation,
                events,
                options,
                first: Some(first),
                recoverable: false,
                position: None,
                status: SubStatus::Waiting,
            },
        );
        if self.connected {
            self.send_subscribe(&channel);
        }
    }

    /// Removes subscription `generation` of `channel` (its handle was dropped).
    pub(crate) fn unsubscribe(&mut self, channel: &str, generation: u64) {
        if self.subs.get(channel).map(|s| s.generation) != Some(generation) {
            return;
        }
        let was_sent = self
            .subs
            .remove(channel)
            .is_some_and(|s| !matches!(s.status, SubStatus::Waiting));
        if self.connected && was_sent {
            let id = self.pending.insert(Waiter::Ignore {
                method: "unsubscribe",
            });
            self.out
                .push(command(id, "unsubscribe", json!({ "channel": channel })));
        }
    }

    fn send_subscribe(&mut self, channel: &str) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        let mut params = Map::new();
        params.insert("channel".into(), channel.into());
        if let Some(token) = &sub.options.token {
            params.insert("token".into(), token.as_str().into());
        }
        if let Some(data) = &sub.options.data {
            params.insert("data".into(), data.clone());
        }
        if let (true, Some(pos)) = (sub.recoverable, &sub.position) {
            params.insert("recover".into(), true.into());
            params.insert("epoch".into(), pos.epoch.as_str().into());
            params.insert("offset".into(), pos.offset.into());
        }
        let id = self.pending.insert(Waiter::Subscribe {
            channel: channel.to_owned(),
            generation: sub.generation,
        });
        sub.status = SubStatus::Subscribing {
            buffered: Vec::new(),
        };
        self.out
            .push(command(id, "subscribe", Value::Object(params)));
    }

    /// A connection is up (its `connect` succeeded): subscribe again, then send what waited.
    pub(crate) fn on_connected(&mut self) {
        self.connected = true;
        self.disconnect = None;
        self.reconnect_delay = None;
        let mut channels: Vec<String> = self.subs.keys().cloned().collect();
        channels.sort();
        for channel in channels {
            self.send_subscribe(&channel);
        }
        for q in std::mem::take(&mut self.queued) {
            self.request(q.method, q.params, q.tx);
        }
    }

    /// The connection is gone. Subscriptions stay, to be recovered on the next one.
    pub(crate) fn on_disconnected(&mut self) {
        self.connected = false;
        self.out.clear();
        self.pending.fail_all();
        for sub in self.subs.values_mut() {
            // Publications buffered during a subscribe are dropped: the recovery will bring them.
            sub.status = SubStatus::Waiting;
        }
    }

    /// For good: waiting callers get `error` and every subscription's stream ends.
    pub(crate) fn shut_down(&mut self, error: &Error) {
        self.on_disconnected();
        for q in self.queued.drain(..) {
            let _ = q.tx.send(Err(error.clone()));
        }
        for (_, sub) in self.subs.drain() {
            if let Some(first) = sub.first {
                let _ = first.send(Err(error.clone()));
            }
        }
    }

    /// The `disconnect` push of the current connection, if one came: its code and reason.
    pub(crate) fn disconnect_push(&self) -> Option<(u16, String)> {
        self.disconnect.clone()
    }

    /// How long the server asked this client to wait before reconnecting, if it did.
    pub(crate) fn reconnect_delay(&self) -> Option<std::time::Duration> {
        self.reconnect_delay.map(std::time::Duration::from_millis)
    }

    /// The next frame to send: queued objects, one per line.
    pub(crate) fn next_frame(&mut self) -> Option<String> {
        if self.out.is_empty() {
            return None;
        }
        let mut take = 0;
        let mut bytes = 0;
        for line in &self.out {
            if take > 0 && bytes + line.len() > BATCH_BYTES {
                break;
            }
            bytes += line.len() + 1;
            take += 1;
        }
        Some(self.out.drain(..take).collect::<Vec<_>>().join("\n"))
    }

    /// A text frame from the server.
    pub(crate) fn on_text(&mut self, text: &str) {
        for item in parse_frame(text) {
            match item {
                Ok(Incoming::Reply { id, result }) => self.on_reply(id, result),
                Ok(Incoming::Push(push)) => self.on_push(push),
                Err(e) => tracing::warn!("ignoring a message from the server: {e}"),
            }
        }
    }

    fn on_reply(&mut self, id: u64, result: Result<Box<RawValue>, ServerError>) {
        match self.pending.take(id) {
            Some(Waiter::Caller { tx, .. }) => {
                let _ = tx.send(result.map_err(Error::Server));
            }
            Some(Waiter::Subscribe {
                channel,
                generation,
            }) => self.on_subscribe_reply(&channel, generation, result),
            Some(Waiter::Ignore { method }) => {
                if let Err(e) = result {
                    tracing::debug!(method, "{e}");
                }
            }
            None => tracing::debug!(id, "a reply nobody waits for any more (timed out)"),
        }
    }

    fn on_subscribe_reply(
        &mut self,
        channel: &str,
        generation: u64,
        result: Result<Box<RawValue>, ServerError>,
    ) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return; // unsubscribed meanwhile
        };
        if sub.generation != generation {
            return;
        }
        let SubStatus::Subscribing { buffered } = &mut sub.status else {
            return; // from a connection that is gone
        };
        let buffered = std::mem::take(buffered);
        let result = result.map_err(Error::Server).and_then(|v| {
            decode::<SubscribeResult>(&v)
                .map_err(|e| Error::Protocol(format!("subscribe result: {e}")))
        });
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(sub) = self.subs.remove(channel) {
                    match sub.first {
                        Some(first) => {
                            let _ = first.send(Err(e));
                        }
                        None => {
                            let (code, reason) = match e {
                                Error::Server(e) => (e.code, e.message),
                                other => (0, other.to_string()),
                            };
                            let _ = sub.events.send(Event::Unsubscribed { code, reason });
                        }
                    }
                }
                return;
            }
        };
        let first = sub.first.take();
        let recovery = match (&first, r.recovered) {
            (Some(_), _) => Recovery::Fresh,
            (None, Some(true)) => Recovery::Recovered,
            (None, _) => Recovery::Lost,
        };
        let position = r.epoch.clone().map(|epoch| StreamPosition {
            offset: r.offset,
            epoch,
        });
        sub.recoverable = r.recoverable;
        let _ = sub.events.send(Event::Subscribed(Subscribed {
            position: position.clone(),
            recoverable: r.recoverable,
            recovery,
            data: r.data,
        }));
        if recovery == Recovery::Recovered {
            for p in r.publications {
                let p = p.into_publication();
                let offset = match &p {
                    Ok(p) => p.offset,
                    Err(u) => u.offset,
                };
                // Recovered publications are complete by the server's word: only skip what was
                // delivered already.
                if let Some(pos) = &mut sub.position {
                    if offset <= pos.offset {
                        continue;
                    }
                    pos.offset = offset;
                }
                let _ = sub.events.send(event(channel, p));
            }
        } else {
            sub.position = position;
        }
        sub.status = SubStatus::Active;
        if let Some(first) = first {
            let _ = first.send(Ok(()));
        }
        for p in buffered {
            self.on_publication(channel, p);
        }
    }

    fn on_publication(&mut self, channel: &str, p: Result<Publication, Undecodable>) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        match &mut sub.status {
            // The recovery after the next connect brings it.
            SubStatus::Waiting => return,
            SubStatus::Subscribing { buffered } => {
                buffered.push(p);
                return;
            }
            SubStatus::Active => {}
        }
        let offset = match &p {
            Ok(p) => p.offset,
            Err(u) => u.offset,
        };
        let order = match (&sub.position, sub.recoverable && offset > 0) {
            (Some(pos), true) if offset <= pos.offset => Order::Duplicate,
            (Some(pos), true) if offset == pos.offset + 1 => Order::Next,
            (Some(_), true) => Order::Gap,
            _ => Order::Untracked,
        };
        match order {
            Order::Next | Order::Untracked => {
                if let Some(pos) = &mut sub.position {
                    pos.offset = pos.offset.max(offset);
                }
                let _ = sub.events.send(event(channel, p));
            }
            Order::Duplicate => {}
            Order::Gap => {
                // Publications were lost on the way (docs/protocol.md): subscribe again with
                // `recover` from the last one delivered; the recovery brings this one too.
                tracing::info!(
                    channel,
                    offset,
                    "publications skipped; resubscribing to recover them"
                );
                self.unsubscribe_raw(channel);
                self.send_subscribe(channel);
            }
        }
    }

    fn unsubscribe_raw(&mut self, channel: &str) {
        let id = self.pending.insert(Waiter::Ignore {
            method: "unsubscribe",
        });
        self.out
            .push(command(id, "unsubscribe", json!({ "channel": channel })));
    }

    fn on_push(&mut self, push: Push) {
        match push {
            Push::Pub {
                channel,
                publication,
            } => self.on_publication(&channel, publication),
            Push::Join { channel, info } => {
                if let Some(sub) = self.subs.get(&channel) {
                    let _ = sub.events.send(Event::Join(info));
                }
            }
            Push::Leave { channel, info } => {
                if let Some(sub) = self.subs.get(&channel) {
                    let _ = sub.events.send(Event::Leave(info));
                }
            }
            Push::Subscribe { channel } => {
                tracing::debug!(channel, "server-side subscription (not followed)");
            }
            Push::Unsubscribe {
                channel,
                code,
                reason,
            } => {
                if !self.subs.contains_key(&channel) {
                    return;
                }
                if code >= 2500 && self.connected {
                    // 2500 (insufficient state) and 2501 (expired) ask to subscribe again and recover.
                    tracing::info!(channel, code, reason, "resubscribing, as the server asks");
                    self.send_subscribe(&channel);
                } else if let Some(sub) = self.subs.remove(&channel) {
                    let _ = sub.events.send(Event::Unsubscribed { code, reason });
                }
            }
            Push::Disconnect {
                code,
                reason,
                delay,
                ..
            } => {
                self.disconnect = Some((code, reason));
                self.reconnect_delay = delay;
            }
        }
    }
}

/// The event for a publication, or for one this client could not decode: reported (and logged), never
/// dropped without a word; the stream goes on after it.
fn event(channel: &str, p: Result<Publication, Undecodable>) -> Event {
    match p {
        Ok(p) => Event::Publication(p),
        Err(Undecodable { offset, error }) => {
            tracing::warn!(
                channel,
                offset,
                "a publication could not be decoded: {error}"
            );
            Event::Undecodable { offset, error }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Data;

    fn value(raw: &RawValue) -> Value {
        serde_json::from_str(raw.get()).unwrap()
    }

    fn connected() -> Session {
        let mut s = Session::default();
        s.on_connected();
        s
    }

    /// The objects queued to send.
    fn sent(s: &mut Session) -> Vec<Value> {
        let mut all = Vec::new();
        while let Some(frame) = s.next_frame() {
            all.extend(
                frame
                    .lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
        all
    }

    fn request(
        s: &mut Session,
        method: &'static str,
    ) -> oneshot::Receiver<Result<Box<RawValue>, Error>> {
        let (tx, rx) = oneshot::channel();
        s.request(method, json!({}), tx);
        rx
    }

    struct TestSub {
        events: mpsc::UnboundedReceiver<Event>,
        first: oneshot::Receiver<Result<(), Error>>,
    }

    fn subscribe(s: &mut Session, channel: &str) -> TestSub {
        let (etx, events) = mpsc::unbounded_channel();
        let (ftx, first) = oneshot::channel();
        s.subscribe(channel.into(), 1, SubscribeOptions::default(), etx, ftx);
        TestSub { events, first }
    }

    fn events(sub: &mut TestSub) -> Vec<Event> {
        std::iter::from_fn(|| sub.events.try_recv().ok()).collect()
    }

    fn offsets(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Publication(p) => Some(p.offset),
                _ => None,
            })
            .collect()
    }

    fn publication(channel: &str, offset: u64) -> String {
        json!({"pub": {"channel": channel, "offset": offset, "data": {"n": offset}}}).to_string()
    }

    #[test]
    fn replies_reach_their_own_callers_in_any_order() {
        let mut s = connected();
        let mut a = request(&mut s, "publish");
        let mut b = request(&mut s, "rpc");
        let mut c = request(&mut s, "history");
        let ids: Vec<u64> = sent(&mut s)
            .iter()
            .map(|v| v["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
        // Replies in another order than the commands, several in one frame, and one for nobody.
        s.on_text(&format!(
            "{{\"id\":{},\"history\":{{\"n\":3}}}}\n{{\"id\":999,\"publish\":{{}}}}\n{{\"id\":{},\"error\":{{\"code\":108,\"message\":\"not available\"}}}}",
            ids[2], ids[1]
        ));
        s.on_text(&format!(
            "{{\"id\":{},\"publish\":{{\"offset\":1}}}}",
            ids[0]
        ));
        assert_eq!(value(&a.try_recv().unwrap().unwrap()), json!({"offset": 1}));
        let Err(Error::Server(e)) = b.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!(
            e.kind(),
            Some(switchboard_protocol::ErrorCode::NotAvailable)
        );
        assert_eq!(value(&c.try_recv().unwrap().unwrap()), json!({"n": 3}));
        assert_eq!(s.pending.len(), 0);
    }

    #[test]
    fn a_lost_connection_fails_commands_in_flight_and_sends_queued_ones_later() {
        let mut s = connected();
        let mut in_flight = request(&mut s, "publish");
        sent(&mut s);
        s.on_disconnected();
        assert!(matches!(
            in_flight.try_recv().unwrap(),
            Err(Error::Disconnected { method: "publish" })
        ));
        let mut queued = request(&mut s, "rpc");
        let gave_up = request(&mut s, "presence");
        drop(gave_up);
        assert!(
            sent(&mut s).is_empty(),
            "nothing is sent without a connection"
        );
        s.on_connected();
        let out = sent(&mut s);
        assert_eq!(out.len(), 1, "the caller that gave up is skipped: {out:?}");
        let id = out[0]["id"].as_u64().unwrap();
        s.on_text(&format!("{{\"id\":{id},\"rpc\":{{\"data\":1}}}}"));
        assert_eq!(
            value(&queued.try_recv().unwrap().unwrap()),
            json!({"data": 1})
        );
    }

    #[test]
    fn callers_that_gave_up_are_pruned() {
        let mut s = connected();
        for _ in 0..1000 {
            drop(request(&mut s, "rpc"));
        }
        assert!(s.pending.len() <= 128, "{}", s.pending.len());
    }

    #[test]
    fn ids_stay_in_the_protocols_range() {
        let mut p = Pending {
            next_id: MAX_ID,
            ..Pending::default()
        };
        assert_eq!(p.insert(Waiter::Ignore { method: "x" }), MAX_ID);
        assert_eq!(p.insert(Waiter::Ignore { method: "x" }), 1);
    }

    /// Subscribes to `c` at epoch "e", offset 5, and returns the subscription.
    fn subscribed(s: &mut Session) -> TestSub {
        let mut sub = subscribe(s, "c");
        let out = sent(s);
        assert_eq!(out[0]["subscribe"], json!({"channel": "c"}));
        let id = out[0]["id"].as_u64().unwrap();
        s.on_text(&format!(
            "{{\"id\":{id},\"subscribe\":{{\"epoch\":\"e\",\"offset\":5,\"recoverable\":true}}}}"
        ));
        assert!(sub.first.try_recv().unwrap().is_ok());
        let ev = events(&mut sub);
        assert!(
            matches!(&ev[..], [Event::Subscribed(Subscribed { recovery: Recovery::Fresh, position: Some(p), .. })] if p.offset == 5),
            "{ev:?}"
        );
        sub
    }

    #[test]
    fn reconnect_recovers_from_the_last_offset_without_doubles() {
        let mut s = connected();
        let mut sub = subscribed(&mut s);
        s.on_text(&format!("{}\n{}", publication("c", 6), publication("c", 7)));
        assert_eq!(offsets(&events(&mut sub)), [6, 7]);
        s.on_disconnected();
        s.on_connected();
        let out = sent(&mut s);
        assert_eq!(
            out[0]["subscribe"],
            json!({"channel": "c", "recover": true, "epoch": "e", "offset": 7})
        );
        // A push that overtakes the subscribe result waits for it, and is not doubled.
        s.on_text(&publication("c", 9));
        let id = out[0]["id"].as_u64().unwrap();
        let reply = json!({"id": id, "subscribe": {"epoch": "e", "offset": 9, "recoverable": true, "recovered": true,
            "publications": [{"offset": 7, "data": 7}, {"offset": 8, "data": 8}, {"offset": 9, "data": 9}]}});
        s.on_text(&reply.to_string());
        s.on_text(&format!(
            "{}\n{}",
            publication("c", 9),
            publication("c", 10)
        ));
        let ev = events(&mut sub);
        assert!(matches!(
            &ev[0],
            Event::Subscribed(Subscribed {
                recovery: Recovery::Recovered,
                ..
            })
        ));
        assert_eq!(offsets(&ev), [8, 9, 10]);
    }

    #[test]
    fn a_recovery_that_goes_on_as_pushes_after_the_reply_is_delivered_whole() {
        // docs/protocol.md, Recovery: the reply carries what fits in the server's queue for us, the
        // rest follows as pushes; the reply's offset is where the stream stands, not where we are.
        let mut s = connected();
        let mut sub = subscribed(&mut s);
        s.on_text(&publication("c", 6));
        s.on_disconnected();
        s.on_connected();
        let out = sent(&mut s);
        let id = out[0]["id"].as_u64().unwrap();
        let reply = json!({"id": id, "subscribe": {"epoch": "e", "offset": 20, "recoverable": true, "recovered": true,
            "publications": [{"offset": 7, "data": 7}, {"offset": 8, "data": 8}]}});
        s.on_text(&reply.to_string());
        let rest: Vec<String> = (9..=21).map(|o| publication("c", o)).collect();
        s.on_text(&rest.join("\n"));
        assert_eq!(offsets(&events(&mut sub)), (6..=21).collect::<Vec<_>>());
        assert!(
            sent(&mut s).is_empty(),
            "no resubscribe: nothing was skipped"
        );
    }

    #[test]
    fn unrecoverable_positions_are_reported_and_followed() {
        let mut s = connected();
        let mut sub = subscribed(&mut s);
        s.on_disconnected();
        s.on_connected();
        let id = sent(&mut s)[0]["id"].as_u64().unwrap();
        s.on_text(&json!({"id": id, "subscribe": {"epoch": "f", "offset": 40, "recoverable": true, "recovered": false}}).to_string());
        s.on_text(&publication("c", 41));
        let ev = events(&mut sub);
        assert!(
            matches!(&ev[0], Event::Subscribed(Subscribed { recovery: Recovery::Lost, position: Some(p), .. }) if p.epoch == "f"),
            "{ev:?}"
        );
        assert_eq!(offsets(&ev), [41]);
    }

    #[test]
    fn an_undecodable_publication_is_reported_in_its_place_and_the_stream_goes_on() {
        let mut s = connected();
        let mut sub = subscribed(&mut s);
        s.on_text(&publication("c", 6));
        s.on_text(r#"{"pub":{"channel":"c","offset":7,"data":[1E400]}}"#);
        s.on_text(&publication("c", 8));
        let ev = events(&mut sub);
        assert!(
            matches!(&ev[1], Event::Undecodable { offset: 7, error } if error.contains("data")),
            "{ev:?}"
        );
        assert_eq!(offsets(&ev), [6, 8]);
        assert!(sent(&mut s).is_empty(), "no gap, no resubscribe: {ev:?}");
        // In a recovery too: reported in its place, the others delivered.
        s.on_disconnected();
        s.on_connected();
        let id = sent(&mut s)[0]["id"].as_u64().unwrap();
        s.on_text(&format!(
            r#"{{"id":{id},"subscribe":{{"epoch":"e","offset":10,"recoverable":true,"recovered":true,"publications":[{{"offset":9,"data":"\ud800"}},{{"offset":10,"data":10}}]}}}}"#
        ));
        let ev = events(&mut sub);
        assert!(
            matches!(&ev[1], Event::Undecodable { offset: 9, .. }),
            "{ev:?}"
        );
        assert_eq!(offsets(&ev), [10]);
    }

    #[test]
    fn a_gap_resubscribes_with_recover() {
        let mut s = connected();
        let mut sub = subscribed(&mut s);
        s.on_text(&publication("c", 6));
        s.on_text(&publication("c", 8));
        let out = sent(&mut s);
        assert_eq!(out[0]["unsubscribe"], json!({"channel": "c"}));
        assert_eq!(
            out[1]["subscribe"],
            json!({"channel": "c", "recover": true, "epoch": "e", "offset": 6})
        );
        let id = out[1]["id"].as_u64().unwrap();
        s.on_text(&json!({"id": id, "subscribe": {"epoch": "e", "offset": 8, "recoverable": true, "recovered": true,
            "publications": [{"offset": 7, "data": 7}, {"offset": 8, "data": 8}]}}).to_string());
        assert_eq!(offsets(&events(&mut sub)), [6, 7, 8]);
    }

    #[test]
    fn server_unsubscribes_resubscribe_or_end() {
        let mut s = connected();
        let mut sub = subscribed(&mut s);
        s.on_text(r#"{"unsubscribe":{"channel":"c","code":2500,"reason":"insufficient state"}}"#);
        let out = sent(&mut s);
        assert_eq!(out[0]["subscribe"]["recover"], true);
        let id = out[0]["id"].as_u64().unwrap();
        // The resubscribe is refused: the subscription ends with the error's code.
        s.on_text(&format!(
            "{{\"id\":{id},\"error\":{{\"code\":103,\"message\":\"permission denied\"}}}}"
        ));
        let ev = events(&mut sub);
        assert_eq!(
            ev.last(),
            Some(&Event::Unsubscribed {
                code: 103,
                reason: "permission denied".into()
            })
        );
        assert!(sub.events.try_recv().is_err());

        let mut sub = subscribed(&mut s);
        s.on_text(r#"{"unsubscribe":{"channel":"c","code":2000,"reason":"server unsubscribe"}}"#);
        assert_eq!(
            events(&mut sub),
            [Event::Unsubscribed {
                code: 2000,
                reason: "server unsubscribe".into()
            }]
        );
        assert!(sub.events.is_closed() || sub.events.try_recv().is_err());
        assert!(sent(&mut s).is_empty());
    }

    #[test]
    fn a_refused_first_subscribe_is_the_callers_error() {
        let mut s = connected();
        let mut sub = subscribe(&mut s, "c");
        let id = sent(&mut s)[0]["id"].as_u64().unwrap();
        s.on_text(&format!(
            "{{\"id\":{id},\"error\":{{\"code\":102,\"message\":\"unknown channel\"}}}}"
        ));
        assert_eq!(
            sub.first.try_recv().unwrap().unwrap_err().server_code(),
            Some(102)
        );
        // The channel is free again.
        let mut again = subscribe(&mut s, "c");
        assert!(
            again.first.try_recv().is_err(),
            "still waiting for its reply"
        );
        let mut twice = subscribe(&mut s, "c");
        assert!(matches!(
            twice.first.try_recv().unwrap(),
            Err(Error::AlreadySubscribed(_))
        ));
    }

    #[test]
    fn dropping_a_subscription_unsubscribes_only_that_one() {
        let mut s = connected();
        let _sub = subscribed(&mut s);
        s.unsubscribe("c", 2);
        assert!(sent(&mut s).is_empty(), "another generation is left alone");
        s.unsubscribe("c", 1);
        assert_eq!(sent(&mut s)[0]["unsubscribe"], json!({"channel": "c"}));
        s.on_text(&publication("c", 6));
    }

    #[test]
    fn joins_leaves_and_binary_data_reach_the_subscription() {
        let mut s = connected();
        let mut sub = subscribed(&mut s);
        s.on_text(r#"{"join":{"channel":"c","info":{"client":"x","user":"u"}}}"#);
        s.on_text(r#"{"pub":{"channel":"c","offset":6,"b64data":"AQI="}}"#);
        s.on_text(r#"{"leave":{"channel":"c","info":{"client":"x","user":"u"}}}"#);
        let ev = events(&mut sub);
        assert!(matches!(&ev[0], Event::Join(i) if i.client == "x"));
        assert!(matches!(&ev[1], Event::Publication(p) if p.data == Data::Binary(vec![1, 2])));
        assert!(matches!(&ev[2], Event::Leave(i) if i.user == "u"));
    }

    #[test]
    fn large_batches_are_split() {
        let mut s = connected();
        let mut waiting = Vec::new();
        for _ in 0..40 {
            let (tx, rx) = oneshot::channel();
            s.request("publish", json!({"data": "x".repeat(4000)}), tx);
            waiting.push(rx);
        }
        let mut frames = 0;
        while let Some(f) = s.next_frame() {
            assert!(f.len() <= BATCH_BYTES + 5000);
            frames += 1;
        }
        assert!(frames >= 2);
    }
}
