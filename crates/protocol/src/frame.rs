//! [`Frame`]: one encoded reply or push, as the hub queues it for a client, whatever the transport.
//!
//! A frame is the protocol's JSON text of one message (`encode::*` builds it) behind a reference
//! count, so that a publication is encoded once and the same bytes are queued on every subscriber's
//! session. A transport that wraps the text in framing of its own (a WebSocket frame header,
//! deflate, an Engine.IO packet prefix) would otherwise redo that wrapping once per subscriber: a
//! frame made with [`Frame::shared`] carries a few cache slots, one per wire type, where the first
//! subscriber's wire leaves its encoding ([`Frame::encoded`]) and every other subscriber's wire of
//! the same type finds it. This keeps the protocol crate free of any transport type while the
//! WebSocket wire still frames and compresses each publication once for all subscribers.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// How many wire types may cache an encoding of one shared frame. Two transports on one node
/// framing the same publication differently (WebSocket and Engine.IO's websocket, say) is the
/// expected most; a further type still works, encoding per subscriber.
const SLOTS: usize = 3;

/// One reply or push, encoded once, cheap to clone (a reference count).
#[derive(Clone)]
pub struct Frame {
    inner: Arc<Inner>,
}

struct Inner {
    text: Bytes,
    /// `Some` for frames queued on many sessions (see [`Frame::shared`]).
    slots: Option<[OnceLock<Encoding>; SLOTS]>,
}

/// One wire type's encoding of the frame.
struct Encoding {
    wire: TypeId,
    value: Box<dyn Any + Send + Sync>,
}

impl Frame {
    /// A frame for one client (a reply, a push to it alone): its wire encodes it directly, nothing
    /// is cached.
    pub fn new(text: Bytes) -> Self {
        Self {
            inner: Arc::new(Inner { text, slots: None }),
        }
    }

    /// A frame queued on many sessions (a publication, a presence event): each wire type encodes
    /// it once, on first use, for all of them ([`Frame::encoded`]).
    pub fn shared(text: Bytes) -> Self {
        Self {
            inner: Arc::new(Inner {
                text,
                slots: Some(Default::default()),
            }),
        }
    }

    /// The protocol text (one JSON message).
    pub fn text(&self) -> &Bytes {
        &self.inner.text
    }

    /// The text as a string (the encoders only write UTF-8; `None` never happens for their frames).
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.inner.text).ok()
    }

    /// Bytes of text: what the slow-consumer bound counts.
    pub fn len(&self) -> usize {
        self.inner.text.len()
    }

    /// Whether the text is empty (no encoder makes such a frame).
    pub fn is_empty(&self) -> bool {
        self.inner.text.is_empty()
    }

    /// Whether the frame was made for many sessions ([`Frame::shared`]), so that caching a wire
    /// encoding pays.
    pub fn is_shared(&self) -> bool {
        self.inner.slots.is_some()
    }

    /// True when both are the same frame (so they share every cached encoding).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.inner, &b.inner)
    }

    /// The encoding of wire type `T`: computed by `encode` on first use and cached for every later
    /// caller of the same type (borrowed), or computed for this caller alone (owned) when the frame
    /// is not shared or its slots are taken by other types.
    pub fn encoded<T>(&self, encode: impl Fn(&Bytes) -> T) -> Cow<'_, T>
    where
        T: Any + Clone + Send + Sync,
    {
        let text = &self.inner.text;
        let Some(slots) = &self.inner.slots else {
            return Cow::Owned(encode(text));
        };
        let wire = TypeId::of::<T>();
        for slot in slots {
            // An empty slot is claimed for `T`; one that another type claimed first is passed over.
            let taken = slot.get_or_init(|| Encoding {
                wire,
                value: Box::new(encode(text)),
            });
            if taken.wire == wire
                && let Some(value) = taken.value.downcast_ref::<T>()
            {
                return Cow::Borrowed(value);
            }
        }
        Cow::Owned(encode(text))
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("text", &self.inner.text)
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl PartialEq for Frame {
    /// Frames are equal when their texts are (whatever is cached).
    fn eq(&self, other: &Self) -> bool {
        self.inner.text == other.inner.text
    }
}

impl Eq for Frame {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Upper(String);

    #[derive(Clone, Debug, PartialEq)]
    struct Len(usize);

    #[test]
    fn a_shared_frame_is_encoded_once_per_wire_type() {
        let frame = Frame::shared(Bytes::from_static(b"{\"pub\":1}"));
        let calls = AtomicUsize::new(0);
        let upper = |t: &Bytes| {
            calls.fetch_add(1, Ordering::Relaxed);
            Upper(String::from_utf8_lossy(t).to_uppercase())
        };
        let a = frame.encoded(upper);
        let other = frame.clone();
        let b = other.encoded(upper);
        assert!(matches!((&a, &b), (Cow::Borrowed(_), Cow::Borrowed(_))));
        assert!(
            std::ptr::eq(&*a, &*b),
            "the second subscriber reuses the first encoding"
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        // Another wire type has a slot of its own.
        assert_eq!(*frame.encoded(|t| Len(t.len())), Len(9));
        assert_eq!(a.0, "{\"PUB\":1}");
    }

    #[test]
    fn a_frame_for_one_client_caches_nothing() {
        let frame = Frame::new(Bytes::from_static(b"{}"));
        assert!(!frame.is_shared());
        assert!(matches!(
            frame.encoded(|t| Len(t.len())),
            Cow::Owned(Len(2))
        ));
    }

    #[test]
    fn more_wire_types_than_slots_still_get_their_encoding() {
        #[derive(Clone, Debug, PartialEq)]
        struct W<const N: usize>(usize);
        let frame = Frame::shared(Bytes::from_static(b"abc"));
        assert_eq!(frame.encoded(|t| W::<0>(t.len())).0, 3);
        assert_eq!(frame.encoded(|t| W::<1>(t.len())).0, 3);
        assert_eq!(frame.encoded(|t| W::<2>(t.len())).0, 3);
        let fourth = frame.encoded(|t| W::<3>(t.len() + 1));
        assert!(matches!(fourth, Cow::Owned(W(4))));
        assert!(matches!(
            frame.encoded(|t| W::<1>(t.len())),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn text_and_length() {
        let frame = Frame::new(Bytes::from_static(b"{\"a\":1}"));
        assert_eq!((frame.len(), frame.as_str()), (7, Some("{\"a\":1}")));
        assert!(!frame.is_empty());
        assert!(Frame::ptr_eq(&frame, &frame.clone()));
        assert!(!Frame::ptr_eq(&frame, &Frame::new(frame.text().clone())));
        assert_eq!(frame, Frame::new(frame.text().clone()));
    }
}
