//! What can go wrong on a connection, and which close code tells the peer.

use std::io;

/// A rule of RFC 6455 or RFC 7692 that the peer broke, or a limit it went over.
///
/// Each variant maps to the close code sent to the peer before the connection is dropped
/// ([`ProtocolError::close_code`]), so a client developer sees why in their browser's console.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A client frame without a masking key (RFC 6455 §5.1).
    #[error("client frames must be masked")]
    UnmaskedFrame,
    /// RSV2 or RSV3 set, or RSV1 set where no extension allows it.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame with FIN clear.
    #[error("control frames must not be fragmented")]
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    /// A 64-bit length with its most significant bit set.
    #[error("frame length has its most significant bit set")]
    InvalidLength,
    /// A single frame over the configured frame limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared payload length.
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// A message (all fragments, after decompression) over the configured message limit.
    #[error("message exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Configured limit.
        max: usize,
    },
    /// More fragments in one message than configured.
    #[error("message split into more than {max} fragments")]
    TooManyFragments {
        /// Configured limit.
        max: usize,
    },
    /// A continuation frame with no message in progress.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still open.
    #[error("new message started before the previous one was finished")]
    ExpectedContinuation,
    /// Text (or a close reason) that is not UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame with a one-byte payload.
    #[error("close frame payload of one byte")]
    InvalidClosePayload,
    /// A close code that may not be sent on the wire.
    #[error("close code {0} may not be sent by an endpoint")]
    InvalidCloseCode(u16),
    /// Compressed data that does not inflate.
    #[error("permessage-deflate data is corrupt")]
    InvalidDeflate,
    /// A fragmented message or a partial frame that did not complete in time.
    #[error("message not completed within the configured message timeout")]
    MessageTimeout,
}

/// Why a connection ended other than by a clean close handshake.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer broke the protocol; it was sent the matching close code.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the TCP connection without a close handshake (code 1006 for the application).
    #[error("peer closed the connection without a close frame")]
    Eof,
    /// No pong (nor any other frame) came back within the pong timeout: the peer is gone.
    #[error("peer did not answer a ping in time")]
    PongTimeout,
    /// Nothing at all was received within the idle timeout.
    #[error("no frame received within the idle timeout")]
    IdleTimeout,
    /// Queued bytes made no progress within the write timeout: the peer stopped reading.
    #[error("peer stopped reading: nothing could be written within the write timeout")]
    WriteTimeout,
    /// The peer did not answer our close frame within the close timeout.
    #[error("peer did not complete the close handshake in time")]
    CloseTimeout,
    /// A message was sent after the connection started closing.
    #[error("connection is closing; message not sent")]
    Closing,
}
