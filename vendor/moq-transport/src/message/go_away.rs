// SPDX-FileCopyrightText: 2024-2026 Cloudflare Inc., Luke Curley, Mike English and contributors
// SPDX-FileCopyrightText: 2023-2024 Luke Curley and contributors
// SPDX-License-Identifier: MIT OR Apache-2.0

use crate::coding::{Decode, DecodeError, Encode, EncodeError, SessionUri};

/// Sent by the server to indicate that the client should connect to a different server.
///
/// Draft-18 §10.4: New Session URI, then Timeout (milliseconds until the sender closes the
/// session). The optional Request ID of a GOAWAY on a request stream is not supported.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct GoAway {
    pub uri: SessionUri,
    /// Milliseconds until the sender closes the session (0: unspecified).
    pub timeout: u64,
}

impl Decode for GoAway {
    fn decode<R: bytes::Buf>(r: &mut R) -> Result<Self, DecodeError> {
        let uri = SessionUri::decode(r)?;
        // Older drafts had no Timeout: tolerate its absence.
        let timeout = if r.has_remaining() { u64::decode(r)? } else { 0 };
        Ok(Self { uri, timeout })
    }
}

impl Encode for GoAway {
    fn encode<W: bytes::BufMut>(&self, w: &mut W) -> Result<(), EncodeError> {
        self.uri.encode(w)?;
        self.timeout.encode(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn encode_decode() {
        let mut buf = BytesMut::new();

        let msg = GoAway {
            uri: SessionUri("moq://example.com:1234".to_string()),
            timeout: 5000,
        };
        msg.encode(&mut buf).unwrap();
        let decoded = GoAway::decode(&mut buf).unwrap();
        assert_eq!(decoded, msg);
    }
}
