//! Error codes, disconnect codes and unsubscribe codes. docs/protocol.md has the same tables; a test in
//! the server checks them against this file.

/// An error answered to one command. The connection stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 100: the server failed; try again.
    Internal,
    /// 101: connect first, or the token is not valid.
    Unauthorized,
    /// 102: no namespace with this name.
    UnknownChannel,
    /// 103: the namespace does not allow this.
    PermissionDenied,
    /// 104: an unknown command.
    MethodNotFound,
    /// 105: subscribed twice to one channel.
    AlreadySubscribed,
    /// 106: too many channels, or a payload over the limit.
    LimitExceeded,
    /// 107: a command that does not parse, or a field of the wrong type.
    BadRequest,
    /// 108: the feature is off (presence, history, RPC).
    NotAvailable,
    /// 109: the token's `exp` passed.
    TokenExpired,
    /// 111: slow down.
    TooManyRequests,
    /// 112: `history.since` names another epoch.
    UnrecoverablePosition,
}

impl ErrorCode {
    /// Every code, for documentation checks.
    pub const ALL: [Self; 12] = [
        Self::Internal,
        Self::Unauthorized,
        Self::UnknownChannel,
        Self::PermissionDenied,
        Self::MethodNotFound,
        Self::AlreadySubscribed,
        Self::LimitExceeded,
        Self::BadRequest,
        Self::NotAvailable,
        Self::TokenExpired,
        Self::TooManyRequests,
        Self::UnrecoverablePosition,
    ];

    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::Internal => 100,
            Self::Unauthorized => 101,
            Self::UnknownChannel => 102,
            Self::PermissionDenied => 103,
            Self::MethodNotFound => 104,
            Self::AlreadySubscribed => 105,
            Self::LimitExceeded => 106,
            Self::BadRequest => 107,
            Self::NotAvailable => 108,
            Self::TokenExpired => 109,
            Self::TooManyRequests => 111,
            Self::UnrecoverablePosition => 112,
        }
    }

    /// The default message.
    pub fn message(self) -> &'static str {
        match self {
            Self::Internal => "internal server error",
            Self::Unauthorized => "unauthorized",
            Self::UnknownChannel => "unknown channel",
            Self::PermissionDenied => "permission denied",
            Self::MethodNotFound => "method not found",
            Self::AlreadySubscribed => "already subscribed",
            Self::LimitExceeded => "limit exceeded",
            Self::BadRequest => "bad request",
            Self::NotAvailable => "not available",
            Self::TokenExpired => "token expired",
            Self::TooManyRequests => "too many requests",
            Self::UnrecoverablePosition => "unrecoverable position",
        }
    }

    /// Whether sending the same command later may succeed.
    pub fn temporary(self) -> bool {
        matches!(self, Self::Internal | Self::TooManyRequests)
    }
}

/// Why the server ends a connection. Sent in the `disconnect` push and as the WebSocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisconnectCode {
    /// 3000: the connection ended without fault.
    Normal,
    /// 3001: the server is stopping or restarting.
    Shutdown,
    /// 3004: the server failed.
    Internal,
    /// 3005: the connection token expired and was not refreshed.
    Expired,
    /// 3008: the client did not read fast enough.
    Slow,
    /// 3010: the server could not keep the client's stream complete.
    InsufficientState,
    /// 3012: the client did not answer the server's ping within the pong timeout. Only ever a
    /// WebSocket close code: a client that does not answer would not read a push either.
    NoPong,
    /// 3500: the connection token does not verify.
    InvalidToken,
    /// 3501: a malformed frame, unparsable JSON, a bad id, or a command before `connect`.
    BadRequest,
    /// 3503: the application disconnected the client for good.
    ForceDisconnect,
    /// 3504: too many connections.
    ConnectionLimit,
}

impl DisconnectCode {
    /// Every code, for documentation checks.
    pub const ALL: [Self; 11] = [
        Self::Normal,
        Self::Shutdown,
        Self::Internal,
        Self::Expired,
        Self::Slow,
        Self::InsufficientState,
        Self::NoPong,
        Self::InvalidToken,
        Self::BadRequest,
        Self::ForceDisconnect,
        Self::ConnectionLimit,
    ];

    /// The number on the wire (and the WebSocket close code).
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 3000,
            Self::Shutdown => 3001,
            Self::Internal => 3004,
            Self::Expired => 3005,
            Self::Slow => 3008,
            Self::InsufficientState => 3010,
            Self::NoPong => 3012,
            Self::InvalidToken => 3500,
            Self::BadRequest => 3501,
            Self::ForceDisconnect => 3503,
            Self::ConnectionLimit => 3504,
        }
    }

    /// The code as text, for metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "3000",
            Self::Shutdown => "3001",
            Self::Internal => "3004",
            Self::Expired => "3005",
            Self::Slow => "3008",
            Self::InsufficientState => "3010",
            Self::NoPong => "3012",
            Self::InvalidToken => "3500",
            Self::BadRequest => "3501",
            Self::ForceDisconnect => "3503",
            Self::ConnectionLimit => "3504",
        }
    }

    /// The reason sent with it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Shutdown => "shutdown",
            Self::Internal => "internal server error",
            Self::Expired => "expired",
            Self::Slow => "slow",
            Self::InsufficientState => "insufficient state",
            Self::NoPong => "no pong",
            Self::InvalidToken => "invalid token",
            Self::BadRequest => "bad request",
            Self::ForceDisconnect => "force disconnect",
            Self::ConnectionLimit => "connection limit",
        }
    }

    /// Codes 3000–3499 advise reconnecting; 3500–3999 do not.
    pub fn reconnect(self) -> bool {
        self.code() < 3500
    }
}

/// Why the server ends one subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnsubscribeCode {
    /// 2000: the server (or the application) unsubscribed the client.
    Server,
    /// 2500: the server could not keep the stream complete; resubscribe with `recover`.
    InsufficientState,
    /// 2501: the subscription's token or grant expired; resubscribe with a new token and `recover`.
    Expired,
}

impl UnsubscribeCode {
    /// Every code, for documentation checks.
    pub const ALL: [Self; 3] = [Self::Server, Self::InsufficientState, Self::Expired];

    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::Server => 2000,
            Self::InsufficientState => 2500,
            Self::Expired => 2501,
        }
    }

    /// The reason sent with it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Server => "server unsubscribe",
            Self::InsufficientState => "insufficient state",
            Self::Expired => "subscription expired",
        }
    }
}
