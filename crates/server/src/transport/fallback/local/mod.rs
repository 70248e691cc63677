//! Requests against a session of this node, whether they arrived here or were relayed from the
//! node they landed on (`../relayed.rs`): the same functions serve both, so a relayed request is
//! answered exactly as a local one.

mod context;
mod poll;
mod sse;
mod upstream;

pub use context::Local;
pub use poll::poll;
pub use sse::{Next, PING, RETRY, event_stream, next_held, ping_interval};
pub use sse::{open as open_stream, stream};
pub use upstream::{close, send};
