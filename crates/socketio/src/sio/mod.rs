//! Socket.IO v5: namespaces, events and acknowledgements over Engine.IO messages.

mod connection;
mod decoder;
mod packet;

pub use connection::{Connection, ConnectionError, Incoming};
pub use decoder::{DEFAULT_MAX_ATTACHMENTS, Decoder, encode};
pub use packet::{
    MAIN_NAMESPACE, MAX_ACK_ID, Packet, PacketError, PacketType, RESERVED_EVENTS, placeholder,
};
