//! Socket.IO v5: namespaces, events and acknowledgements over Engine.IO messages.

mod connection;
mod decoder;
#[cfg(feature = "msgpack")]
mod msgpack;
mod packet;

pub use connection::{Connection, ConnectionError, Incoming};
pub use decoder::{DEFAULT_MAX_ATTACHMENTS, Decoder, Parser, encode};
pub use packet::{
    MAIN_NAMESPACE, MAX_ACK_ID, Packet, PacketError, PacketType, RESERVED_EVENTS, placeholder,
};
