//! The outgoing side of a connection: frames wait here and leave in as few `write` calls as possible.
//!
//! Measured on this project's machine (docs/benchmarks.md, and `../shared/research/ws-stack.md`), one
//! syscall per message caps a core near 130k messages/s whatever the framing crate, while writing every
//! ready frame at once reaches over a million. So the queue coalesces: small frames are copied into one
//! contiguous tail (cheaper than an iovec each), large shared payloads go out as their own `Bytes`
//! (no copy) in the same vectored write. When everything is written the buffers are released, so an
//! idle connection holds no write memory.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::frame::{MAX_HEADER_LEN, OpCode, encode_header};

/// Payloads up to this size are copied into the tail buffer rather than queued as their own slice.
const COPY_BELOW: usize = 2048;

/// Capacity the tail starts with when a frame is queued on an empty queue. Growing from a frame's
/// size by doubling reallocated (and copied) the tail four or five times for a typical batch of
/// pipelined small echoes (about 2.5 % of the server's CPU in the echo benchmark's profile); the
/// tail is released once written, so this is held only while something waits to be written.
const TAIL_START: usize = 1024;

/// Most slices handed to one vectored write (Linux's IOV_MAX is 1024; past a few dozen there is no gain).
const MAX_SLICES: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    /// Written in order before `tail`.
    chunks: VecDeque<Bytes>,
    /// Small frames, coalesced.
    tail: BytesMut,
    len: usize,
}

impl WriteQueue {
    /// Bytes waiting to be written.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a frame built from a header and a payload; a large payload is queued as it is,
    /// without a copy.
    pub(crate) fn push_frame(&mut self, opcode: OpCode, rsv1: bool, payload: &Bytes) {
        if payload.len() < COPY_BELOW {
            return self.push_frame_slice(opcode, rsv1, payload);
        }
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, rsv1, opcode, payload.len());
        self.push_copy(&header[..n]);
        self.push_shared(payload);
    }

    /// Queues a frame built from a header and a borrowed payload, copied whatever its size.
    pub(crate) fn push_frame_slice(&mut self, opcode: OpCode, rsv1: bool, payload: &[u8]) {
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, rsv1, opcode, payload.len());
        // Header and payload land in the tail together: one capacity check for both.
        self.reserve_tail(n + payload.len());
        self.push_copy(&header[..n]);
        self.push_copy(payload);
    }

    /// Queues bytes that are already a complete frame (a shared broadcast frame).
    pub(crate) fn push_shared(&mut self, bytes: &Bytes) {
        if bytes.len() < COPY_BELOW {
            self.push_copy(bytes);
        } else {
            if !self.tail.is_empty() {
                self.chunks.push_back(self.tail.split().freeze());
            }
            self.len += bytes.len();
            self.chunks.push_back(bytes.clone());
        }
    }

    fn push_copy(&mut self, bytes: &[u8]) {
        self.reserve_tail(bytes.len());
        self.len += bytes.len();
        self.tail.extend_from_slice(bytes);
    }

    fn reserve_tail(&mut self, additional: usize) {
        if self.tail.capacity() - self.tail.len() < additional {
            self.tail.reserve(additional.max(TAIL_START));
        }
    }

    /// Writes until the queue is empty or the socket would block.
    pub(crate) fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.len > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for chunk in self.chunks.iter().take(MAX_SLICES - 1) {
                slices[n] = IoSlice::new(chunk);
                n += 1;
            }
            if n < MAX_SLICES - 1 && !self.tail.is_empty() {
                slices[n] = IoSlice::new(&self.tail);
                n += 1;
            }
            let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        // Release the buffers: an idle connection should hold no write memory.
        self.chunks = VecDeque::new();
        self.tail = BytesMut::new();
        Pin::new(io).poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            match self.chunks.front_mut() {
                Some(front) if front.len() <= n => {
                    n -= front.len();
                    self.chunks.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    return;
                }
                None => {
                    self.tail.advance(n);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `limit` bytes per call, to exercise partial writes.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let me = self.get_mut();
            me.calls += 1;
            let n = buf.len().min(me.limit);
            me.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let me = self.get_mut();
            me.calls += 1;
            let mut left = me.limit;
            for b in bufs {
                let n = b.len().min(left);
                me.out.extend_from_slice(&b[..n]);
                left -= n;
            }
            Poll::Ready(Ok(me.limit - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn keeps_order_across_partial_writes_and_coalesces() {
        let mut q = WriteQueue::default();
        let big = Bytes::from(vec![7u8; 5000]);
        q.push_frame(OpCode::Text, false, &Bytes::from_static(b"hi"));
        q.push_frame(OpCode::Binary, false, &big);
        q.push_shared(&Bytes::from_static(b"\x81\x01!"));
        let mut expected = b"\x81\x02hi\x82\x7e\x13\x88".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"\x81\x01!");
        assert_eq!(q.len(), expected.len());

        let mut w = Trickle {
            out: Vec::new(),
            limit: 7,
            calls: 0,
        };
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(q.poll_write(&mut w, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(w.out, expected);
        assert!(q.is_empty() && q.tail.capacity() == 0 && q.chunks.capacity() == 0);

        let mut fast = Trickle {
            out: Vec::new(),
            limit: usize::MAX,
            calls: 0,
        };
        for _ in 0..100 {
            q.push_frame(OpCode::Text, false, &Bytes::from_static(b"0123456789"));
        }
        assert!(matches!(
            q.poll_write(&mut fast, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(fast.calls, 1, "a hundred small frames leave in one write");
        assert_eq!(fast.out.len(), 1200);
        assert_eq!(q.tail.capacity(), 0, "released once written");
    }

    #[test]
    fn the_tail_starts_with_room_for_a_batch() {
        let mut q = WriteQueue::default();
        q.push_frame(OpCode::Text, false, &Bytes::from_static(b"hi"));
        let start = q.tail.capacity();
        assert!(start >= TAIL_START, "{start}");
        let ptr = q.tail.as_ptr();
        while q.len() + 66 <= start {
            q.push_frame(OpCode::Text, false, &Bytes::from(vec![b'x'; 64]));
        }
        assert_eq!(q.tail.as_ptr(), ptr, "no reallocation while the batch fits");
        assert_eq!(q.len(), q.tail.len());
    }
}
