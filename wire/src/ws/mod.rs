pub enum CloseCode { ProtocolError, InvalidPayload, MessageTooBig }
