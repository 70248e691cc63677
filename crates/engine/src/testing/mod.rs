//! What the remote engines' tests and examples share besides the conformance suite (feature
//! `testing`, never for the server): [`process`] runs throwaway store servers (`redis-server`,
//! `nats-server`) for them, and [`roundtrip`] is the publish round trip benchmark of their examples.

pub mod process;
pub mod roundtrip;
