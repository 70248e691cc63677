//! The downstream half of an HTTP fallback session: the replies and pushes waiting for the client, in
//! numbered batches that stay until the client acknowledges them.
//!
//! Over WebSocket a message sent is a message received; over plain HTTP a response can be lost (a
//! proxy drops it, the page goes to sleep). So every non-empty batch handed to a downstream request
//! gets the next sequence number and is kept until a later request acknowledges it (`ack=N`): a lost
//! response is sent again, and nothing is doubled because the client skips what it already acked.
//!
//! Pure data, no IO: the session task pushes into it, the poll and SSE handlers take from it, both
//! under the session's lock.

use std::collections::VecDeque;

use axum::body::Bytes;

/// A session's downstream buffer.
#[derive(Debug, Default)]
pub struct Downstream {
    /// Batches handed out but not acknowledged, oldest first (all with `seq > acked`).
    batches: VecDeque<Batch>,
    /// Messages queued since the last batch was made.
    pending: Vec<Bytes>,
    pending_bytes: usize,
    unacked_bytes: usize,
    /// The sequence number of the newest batch (0: none yet).
    last_seq: u64,
    /// The highest sequence number the client acknowledged.
    acked: u64,
    /// The final push (`disconnect`) is queued: nothing follows it.
    ending: bool,
    /// The batch holding the final push, once it was made.
    final_seq: Option<u64>,
    /// The session is over: a response carried the final batch, or it expired.
    delivered: bool,
    /// Number of the downstream request currently allowed to take from the buffer; each new one
    /// replaces the one before.
    reader: u64,
}

/// Messages handed out together under one sequence number.
#[derive(Debug)]
struct Batch {
    seq: u64,
    messages: Vec<Bytes>,
    bytes: usize,
}

/// What a downstream request takes: the rendered body and whether it ends the session.
#[derive(Debug)]
pub struct Taken {
    /// The response body (a poll's JSON) or chunk (SSE events).
    pub body: Bytes,
    /// The sequence number of the newest batch in it (the acknowledged one when empty).
    pub seq: u64,
    /// It carries the final push: the session is over once it is sent.
    pub last: bool,
}

impl Downstream {
    /// Queues a reply or push (ignored once the final push is queued).
    pub fn push(&mut self, msg: Bytes) {
        if self.ending {
            return;
        }
        self.pending_bytes += msg.len();
        self.pending.push(msg);
    }

    /// Bytes waiting for the client: unacknowledged batches and pending messages.
    pub fn queued_bytes(&self) -> usize {
        self.unacked_bytes + self.pending_bytes
    }

    /// Bytes in batches handed out and not acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.unacked_bytes
    }

    /// The client has every batch up to `seq`: forget them. Acknowledging more than was handed out
    /// acknowledges what was; going back changes nothing.
    pub fn ack(&mut self, seq: u64) {
        let seq = seq.min(self.last_seq);
        if seq <= self.acked {
            return;
        }
        self.acked = seq;
        while self.batches.front().is_some_and(|b| b.seq <= seq) {
            if let Some(b) = self.batches.pop_front() {
                self.unacked_bytes -= b.bytes;
            }
        }
    }

    /// A new downstream request arrives with an optional acknowledgement. Returns its reader number,
    /// which replaces the previous request's; `None` when the session is over.
    pub fn claim(&mut self, ack: Option<u64>) -> Option<u64> {
        if self.delivered {
            return None;
        }
        if let Some(seq) = ack {
            self.ack(seq);
        }
        self.reader += 1;
        Some(self.reader)
    }

    /// Whether `reader` is still the current downstream request.
    pub fn is_reader(&self, reader: u64) -> bool {
        self.reader == reader && !self.delivered
    }

    /// Something to hand out: unacknowledged batches or pending messages.
    pub fn has_news(&self) -> bool {
        !self.batches.is_empty() || !self.pending.is_empty()
    }

    /// The final push is queued.
    #[cfg(test)]
    pub fn ending(&self) -> bool {
        self.ending
    }

    /// The session is over: a response carried the final push, or it expired.
    pub fn delivered(&self) -> bool {
        self.delivered
    }

    /// The highest acknowledged sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Queues the final push. With `drop_queued` (a slow client) everything not yet acknowledged is
    /// dropped first, as a WebSocket client's queue is: the client recovers it from history.
    pub fn end(&mut self, push: Bytes, drop_queued: bool) {
        if self.ending {
            return;
        }
        if drop_queued {
            self.batches.clear();
            self.pending.clear();
            self.unacked_bytes = 0;
            self.pending_bytes = 0;
        }
        self.push(push);
        self.ending = true;
    }

    /// The session is over without a final push (it expired): requests get nothing more.
    pub fn close(&mut self) {
        self.delivered = true;
    }

    /// A poll's answer: every unacknowledged message, old and new, as one JSON object whose `seq` is
    /// the newest batch's (`{"seq":N,"messages":[...]}`), or an empty one with the acknowledged `seq`.
    pub fn take_poll(&mut self) -> Taken {
        self.seal();
        let seq = self.batches.back().map_or(self.acked, |b| b.seq);
        let mut body = Vec::with_capacity(self.unacked_bytes + self.batches.len() * 2 + 32);
        body.extend_from_slice(b"{\"seq\":");
        body.extend_from_slice(seq.to_string().as_bytes());
        body.extend_from_slice(b",\"messages\":[");
        let mut first = true;
        for msg in self.batches.iter().flat_map(|b| &b.messages) {
            if !first {
                body.push(b',');
            }
            first = false;
            body.extend_from_slice(msg);
        }
        body.extend_from_slice(b"]}");
        let last = self.carries_final(0);
        Taken {
            body: Bytes::from(body),
            seq,
            last,
        }
    }

    /// An empty poll answer (for a request replaced by a newer one): nothing is handed out.
    pub fn empty_poll(&self) -> Bytes {
        Bytes::from(format!("{{\"seq\":{},\"messages\":[]}}", self.acked))
    }

    /// SSE events for the batches after `after` (pending messages become a new batch first): one
    /// event per batch, `id: <seq>` and one `data:` line per message. `None` when there is nothing
    /// after `after`.
    pub fn take_events(&mut self, after: u64) -> Option<Taken> {
        self.seal();
        let mut body = Vec::new();
        let mut seq = after;
        for batch in self.batches.iter().filter(|b| b.seq > after) {
            body.extend_from_slice(b"id: ");
            body.extend_from_slice(batch.seq.to_string().as_bytes());
            body.push(b'\n');
            for msg in &batch.messages {
                body.extend_from_slice(b"data: ");
                push_one_line(&mut body, msg);
                body.push(b'\n');
            }
            body.push(b'\n');
            seq = batch.seq;
        }
        if body.is_empty() {
            return None;
        }
        let last = self.carries_final(after);
        Some(Taken {
            body: Bytes::from(body),
            seq,
            last,
        })
    }

    /// Pending messages become the next batch.
    fn seal(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.last_seq += 1;
        let bytes = std::mem::take(&mut self.pending_bytes);
        self.unacked_bytes += bytes;
        self.batches.push_back(Batch {
            seq: self.last_seq,
            messages: std::mem::take(&mut self.pending),
            bytes,
        });
        if self.ending {
            // The final push was the last message queued, so it is in this batch.
            self.final_seq = Some(self.last_seq);
        }
    }

    /// Whether the batches after `after` include the final one; if so the session is delivered.
    fn carries_final(&mut self, after: u64) -> bool {
        let last = self
            .final_seq
            .is_some_and(|f| f > after && self.batches.back().is_some_and(|b| b.seq == f));
        if last {
            self.delivered = true;
        }
        last
    }
}

/// Appends `msg` as one line. JSON text keeps line breaks only as whitespace between tokens (inside
/// strings they are escaped), so turning them into spaces keeps the JSON and the SSE framing intact.
fn push_one_line(out: &mut Vec<u8>, msg: &[u8]) {
    if msg.iter().any(|&b| b == b'\n' || b == b'\r') {
        out.extend(
            msg.iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
    } else {
        out.extend_from_slice(msg);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn msg(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn poll(d: &mut Downstream, ack: Option<u64>) -> String {
        d.claim(ack).unwrap();
        String::from_utf8(d.take_poll().body.to_vec()).unwrap()
    }

    #[test]
    fn a_lost_poll_answer_is_sent_again_with_what_came_since() {
        let mut d = Downstream::default();
        d.push(msg("1"));
        d.push(msg("2"));
        assert_eq!(poll(&mut d, Some(0)), r#"{"seq":1,"messages":[1,2]}"#);
        d.push(msg("3"));
        // The answer above was lost: the client still acks 0.
        assert_eq!(poll(&mut d, Some(0)), r#"{"seq":2,"messages":[1,2,3]}"#);
        assert_eq!(poll(&mut d, Some(2)), r#"{"seq":2,"messages":[]}"#);
        d.push(msg("4"));
        assert_eq!(poll(&mut d, Some(2)), r#"{"seq":3,"messages":[4]}"#);
        assert_eq!(d.queued_bytes(), 1);
        assert_eq!(poll(&mut d, Some(3)), r#"{"seq":3,"messages":[]}"#);
        assert_eq!(d.queued_bytes(), 0);
    }

    #[test]
    fn acks_are_clamped_and_never_go_back() {
        let mut d = Downstream::default();
        d.push(msg("a"));
        d.take_poll();
        d.ack(99);
        assert_eq!(d.acked(), 1);
        d.push(msg("b"));
        d.take_poll();
        d.ack(0);
        assert_eq!(d.acked(), 1);
        assert_eq!(d.unacked_bytes(), 1);
        assert_eq!(poll(&mut d, None), r#"{"seq":2,"messages":[b]}"#);
    }

    #[test]
    fn a_new_request_replaces_the_older_one() {
        let mut d = Downstream::default();
        let first = d.claim(None).unwrap();
        assert!(d.is_reader(first));
        let second = d.claim(None).unwrap();
        assert!(!d.is_reader(first));
        assert!(d.is_reader(second));
        assert_eq!(&d.empty_poll()[..], br#"{"seq":0,"messages":[]}"#);
    }

    #[test]
    fn sse_events_resume_after_the_last_event_id() {
        let mut d = Downstream::default();
        d.push(msg(r#"{"a":1}"#));
        let t = d.take_events(0).unwrap();
        assert_eq!(&t.body[..], b"id: 1\ndata: {\"a\":1}\n\n");
        d.push(msg("2"));
        d.push(msg("3"));
        let t = d.take_events(1).unwrap();
        assert_eq!(
            (&t.body[..], t.seq),
            (&b"id: 2\ndata: 2\ndata: 3\n\n"[..], 2)
        );
        assert!(d.take_events(2).is_none());
        // Reconnecting with Last-Event-ID 1 acks the first batch and sends the second again.
        d.claim(Some(1)).unwrap();
        assert_eq!(
            &d.take_events(1).unwrap().body[..],
            b"id: 2\ndata: 2\ndata: 3\n\n"
        );
        assert_eq!(d.unacked_bytes(), 2);
    }

    #[test]
    fn line_breaks_in_a_message_never_split_an_sse_event() {
        let mut d = Downstream::default();
        d.push(msg("{\"a\":\r\n1}"));
        assert_eq!(
            &d.take_events(0).unwrap().body[..],
            b"id: 1\ndata: {\"a\":  1}\n\n"
        );
    }

    #[test]
    fn the_final_push_ends_the_session_once_handed_out() {
        let mut d = Downstream::default();
        d.push(msg("reply"));
        d.end(msg("bye"), false);
        d.push(msg("late"));
        assert!(d.ending());
        d.claim(None).unwrap();
        let t = d.take_poll();
        assert_eq!(&t.body[..], br#"{"seq":1,"messages":[reply,bye]}"#);
        assert!(t.last && d.delivered());
        assert_eq!(d.claim(Some(1)), None);
    }

    #[test]
    fn a_slow_client_loses_its_queue_but_gets_the_final_push() {
        let mut d = Downstream::default();
        d.push(msg("1"));
        d.take_poll();
        d.push(msg("2"));
        d.end(msg("slow"), true);
        assert_eq!(d.queued_bytes(), 4);
        let t = d.take_events(0).unwrap();
        assert_eq!(&t.body[..], b"id: 2\ndata: slow\n\n");
        assert!(t.last);
    }
}
