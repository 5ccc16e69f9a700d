//! The pre-authentication gate, sans-IO: what a connection that has not said a valid
//! `Hello` gets for each frame it sends.
//!
//! Accounts and tokens are not built yet, so no token is recognised: every `Hello` gets
//! `Error { Unauthenticated }` echoing its request id, and any other first frame gets
//! `Error { UnexpectedFrame }`. Both then close with 4001 (WebSocket) or disconnect (TCP).

use wire::message::{Body, Error, ErrorCode, Frame};
use wire::ws::CloseCode;

pub const TOKEN_NOT_RECOGNISED: &str = "token not recognised (accounts are not built yet)";
pub const HELLO_FIRST: &str = "the first frame must be Hello";

/// The answer to a frame received before authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error frame to send first.
    pub reply: Frame,
    /// Then close the connection with this code and reason.
    pub close: CloseCode,
    pub reason: &'static str,
}

/// Decide what a not-yet-authenticated connection gets for `frame`.
pub fn before_hello(frame: &Frame) -> Refusal {
    let (code, message) = match frame.body {
        Body::Hello(_) => (ErrorCode::Unauthenticated, TOKEN_NOT_RECOGNISED),
        _ => (ErrorCode::UnexpectedFrame, HELLO_FIRST),
    };
    Refusal {
        reply: Frame {
            request_id: frame.request_id,
            body: Body::Error(Error {
                code,
                message: message.to_string(),
                retry_after_ms: 0,
            }),
        },
        close: CloseCode::Unauthenticated,
        reason: "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::message::{Hello, Ping};

    fn error_of(refusal: &Refusal) -> &Error {
        match &refusal.reply.body {
            Body::Error(e) => e,
            other => panic!("expected Error, got {other:?}"),
        }
    }

    #[test]
    fn every_hello_is_refused_with_its_request_id() {
        let hello = Frame {
            request_id: 42,
            body: Body::Hello(Hello::default()),
        };
        let refusal = before_hello(&hello);
        assert_eq!(refusal.reply.request_id, 42);
        assert_eq!(error_of(&refusal).code, ErrorCode::Unauthenticated);
        assert_eq!(error_of(&refusal).message, TOKEN_NOT_RECOGNISED);
        assert_eq!(refusal.close, CloseCode::Unauthenticated);
    }

    #[test]
    fn anything_else_first_is_unexpected() {
        let ping = Frame {
            request_id: 7,
            body: Body::Ping(Ping::default()),
        };
        let refusal = before_hello(&ping);
        assert_eq!(refusal.reply.request_id, 7);
        assert_eq!(error_of(&refusal).code, ErrorCode::UnexpectedFrame);
        assert_eq!(refusal.close, CloseCode::Unauthenticated);
    }
}
