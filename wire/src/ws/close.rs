//! Close status codes (RFC 6455 §7.4) and the ones Confab defines in the private range.

/// A close status code. Confab's own codes live in 4000–4999 (reserved for applications).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the purpose of the connection is fulfilled.
    Normal,
    /// 1001: the server is going down (graceful shutdown) or the client navigates away.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError,
    /// 1003: a data type we cannot accept (e.g. text on the binary subprotocol).
    UnsupportedData,
    /// 1007: the payload is inconsistent with the message type (bad UTF-8, bad frame).
    InvalidPayload,
    /// 1008: a policy was violated (generic).
    PolicyViolation,
    /// 1009: a frame or message is larger than we accept.
    MessageTooBig,
    /// 1011: the server hit an unexpected condition.
    InternalError,
    /// 1012: the server is restarting; reconnect.
    ServiceRestart,
    /// 1013: try again later (overload).
    TryAgainLater,
    /// 4001: no valid session (no Hello, bad or expired token).
    Unauthenticated,
    /// 4002: the handshake or Hello did not arrive in time.
    HandshakeTimeout,
    /// 4003: no traffic (not even a heartbeat) within the idle timeout.
    IdleTimeout,
    /// 4008: the outbound queue overflowed; reconnect and catch up from your cursors.
    SlowConsumer,
    /// 4029: the per-connection rate limit was exceeded repeatedly.
    RateLimited,
    /// 4030: this node does not serve this user; a Redirect frame preceded the close.
    Redirect,
    /// Any other code that is valid on the wire (1000–1014 registered, 3000–4999).
    Other(u16),
}

impl CloseCode {
    pub fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::TryAgainLater => 1013,
            CloseCode::Unauthenticated => 4001,
            CloseCode::HandshakeTimeout => 4002,
            CloseCode::IdleTimeout => 4003,
            CloseCode::SlowConsumer => 4008,
            CloseCode::RateLimited => 4029,
            CloseCode::Redirect => 4030,
            CloseCode::Other(code) => code,
        }
    }

    /// Decode a code received in a Close frame; `None` if it may not appear on the wire
    /// (1004–1006, 1015, 0–999, 1016–2999 unassigned, ≥ 5000).
    pub fn from_wire(code: u16) -> Option<CloseCode> {
        if !is_valid_on_wire(code) {
            return None;
        }
        let known = [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::ProtocolError,
            CloseCode::UnsupportedData,
            CloseCode::InvalidPayload,
            CloseCode::PolicyViolation,
            CloseCode::MessageTooBig,
            CloseCode::InternalError,
            CloseCode::ServiceRestart,
            CloseCode::TryAgainLater,
            CloseCode::Unauthenticated,
            CloseCode::HandshakeTimeout,
            CloseCode::IdleTimeout,
            CloseCode::SlowConsumer,
            CloseCode::RateLimited,
            CloseCode::Redirect,
        ];
        Some(
            known
                .into_iter()
                .find(|c| c.as_u16() == code)
                .unwrap_or(CloseCode::Other(code)),
        )
    }
}

/// RFC 6455 §7.4 and the IANA registry: which codes an endpoint may send in a Close frame.
/// 1010 (mandatory extension) is sent only by clients, but receiving it is legal.
pub fn is_valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autobahn_close_code_table() {
        // Autobahn 7.7.x (valid) and 7.9.x (invalid) close codes.
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ];
        let invalid = [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in valid {
            assert_eq!(
                CloseCode::from_wire(code).map(CloseCode::as_u16),
                Some(code),
                "{code}"
            );
        }
        for code in invalid {
            assert_eq!(CloseCode::from_wire(code), None, "{code}");
        }
    }

    #[test]
    fn named_codes_round_trip() {
        for code in [1000u16, 1001, 1002, 1007, 1009, 4001, 4008, 4029, 4030] {
            let named = CloseCode::from_wire(code).unwrap();
            assert!(
                !matches!(named, CloseCode::Other(_)),
                "{code} should be named"
            );
            assert_eq!(named.as_u16(), code);
        }
    }
}
