//! A wtransport server session as a `web_transport_trait` 0.3 session (for moq `transport::Session::new`).
//! Codes are mapped to the HTTP/3 WebTransport range, which wtransport leaves raw. Streams use the inner quinn
//! streams (feature "quinn"): wtransport's wrappers lose errors, and lack sync finish, `&mut` stop and Bytes reads.
use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use url::Url;
use web_transport_quinn::proto::{error_from_http3, error_to_http3};
use wtransport::error::{ConnectionError, SendDatagramError, StreamOpeningError};
use wtransport::{quinn, Connection, VarInt};

/// HTTP/3 "no error", which peers also use for an ordinary close.
const H3_NO_ERROR: u64 = 0x100;

/// Wire code for a WebTransport code (`error_to_http3(u32::MAX)` < 2^62: never saturates).
fn quic_code(code: u32) -> quinn::VarInt {
    quinn::VarInt::from_u64(error_to_http3(code)).unwrap_or(quinn::VarInt::MAX)
}
/// The WebTransport code of a peer RESET_STREAM / STOP_SENDING, if in range.
fn stream_code(code: quinn::VarInt) -> Option<u32> {
    error_from_http3(code.into_inner())
}

/// An error from a WebTransport session or one of its streams.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WtError {
    /// Closed with an application code, by us or by the peer.
    #[error("session closed (code {code}): {reason}")]
    Closed { code: u32, reason: String },
    /// The connection ended without an application code (timeout, protocol error, ...).
    #[error("connection: {0}")]
    Connection(ConnectionError),
    /// The peer sent STOP_SENDING; `None` if the code is outside the WebTransport range.
    #[error("stream stopped by peer (code {0:?})")]
    Stopped(Option<u32>),
    /// The peer sent RESET_STREAM; `None` if the code is outside the WebTransport range.
    #[error("stream reset by peer (code {0:?})")]
    Reset(Option<u32>),
    /// The stream was already finished, reset or stopped locally.
    #[error("stream already closed")]
    ClosedStream,
    /// The peer stopped a new stream before its header was written.
    #[error("peer refused the stream")]
    Refused,
    /// The datagram exceeds `max_datagram_size`.
    #[error("datagram too large")]
    DatagramTooLarge,
    /// The peer did not enable datagrams.
    #[error("peer does not support datagrams")]
    DatagramUnsupported,
    /// QUIC-level misuse (0-RTT rejection, unordered read), not expected on a server.
    #[error("QUIC protocol error")]
    Proto,
}

impl web_transport_trait::Error for WtError {
    fn session_error(&self) -> Option<(u32, String)> {
        match self {
            Self::Closed { code, reason } => Some((*code, reason.clone())),
            // moq's quinn path counts LocallyClosed as graceful; a backend says so with code 0.
            Self::Connection(ConnectionError::LocallyClosed) => Some((0, String::new())),
            _ => None,
        }
    }
    fn stream_error(&self) -> Option<u32> {
        match self {
            // An out-of-range code still ends only this stream, not the session.
            Self::Stopped(code) | Self::Reset(code) => Some(code.unwrap_or(0)),
            Self::ClosedStream => Some(0),
            _ => None,
        }
    }
}

struct Shared {
    conn: Connection,
    /// The first application close seen: our `close()` or the peer's capsule/CONNECTION_CLOSE.
    close: OnceLock<(u32, String)>,
    protocol: Option<String>,
}

impl Shared {
    fn conn_err(&self, err: ConnectionError) -> WtError {
        match &err {
            ConnectionError::ApplicationClosed(close) => {
                let raw = close.code().into_inner();
                // A peer CONNECTION_CLOSE (HTTP/3 code) is also quinn's close reason. A peer
                // CLOSE_WEBTRANSPORT_SESSION capsule (WT code) is not: the driver closed locally.
                let quic_level = matches!(self.conn.quic_connection().close_reason(),
                    Some(quinn::ConnectionError::ApplicationClosed(ref c)) if c.error_code.into_inner() == raw);
                let code = if !quic_level {
                    u32::try_from(raw).ok()
                } else if raw == 0 || raw == H3_NO_ERROR {
                    Some(0)
                } else {
                    error_from_http3(raw)
                };
                let Some(code) = code else {
                    return WtError::Connection(err);
                };
                let reason = String::from_utf8_lossy(close.reason()).into_owned();
                let _ = self.close.set((code, reason.clone()));
                WtError::Closed { code, reason }
            }
            ConnectionError::LocallyClosed => match self.close.get() {
                Some((code, reason)) => WtError::Closed {
                    code: *code,
                    reason: reason.clone(),
                },
                None => WtError::Connection(err),
            },
            _ => WtError::Connection(err),
        }
    }
    /// For errors that only say "not connected": ask quinn why.
    fn lost(&self) -> WtError {
        match self.conn.quic_connection().close_reason() {
            Some(e) => self.conn_err(e.into()),
            None => WtError::Connection(ConnectionError::LocallyClosed),
        }
    }
    fn opening_err(&self, err: StreamOpeningError) -> WtError {
        match err {
            StreamOpeningError::NotConnected => self.lost(),
            StreamOpeningError::Refused => WtError::Refused,
        }
    }
    fn write_err(&self, err: quinn::WriteError) -> WtError {
        match err {
            quinn::WriteError::Stopped(code) => WtError::Stopped(stream_code(code)),
            quinn::WriteError::ConnectionLost(e) => self.conn_err(e.into()),
            quinn::WriteError::ClosedStream => WtError::ClosedStream,
            quinn::WriteError::ZeroRttRejected => WtError::Proto,
        }
    }
    fn read_err(&self, err: quinn::ReadError) -> WtError {
        match err {
            quinn::ReadError::Reset(code) => WtError::Reset(stream_code(code)),
            quinn::ReadError::ConnectionLost(e) => self.conn_err(e.into()),
            quinn::ReadError::ClosedStream => WtError::ClosedStream,
            quinn::ReadError::IllegalOrderedRead | quinn::ReadError::ZeroRttRejected => {
                WtError::Proto
            }
        }
    }
    fn send(self: &Arc<Self>, inner: wtransport::SendStream) -> WtSendStream {
        WtSendStream {
            inner,
            shared: self.clone(),
        }
    }
    fn recv(self: &Arc<Self>, inner: wtransport::RecvStream) -> WtRecvStream {
        WtRecvStream {
            inner,
            shared: self.clone(),
        }
    }
}

/// An accepted WebTransport session. Clones share the connection.
#[derive(Clone)]
pub struct WtSession {
    shared: Arc<Shared>,
    url: Url,
}

impl WtSession {
    /// `url` is `https://{authority}{path}` of the CONNECT; `protocol` is what we sent in `wt-protocol`.
    pub fn new(conn: Connection, url: Url, protocol: Option<String>) -> Self {
        Self {
            shared: Arc::new(Shared {
                conn,
                close: OnceLock::new(),
                protocol,
            }),
            url,
        }
    }
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl web_transport_trait::Session for WtSession {
    type SendStream = WtSendStream;
    type RecvStream = WtRecvStream;
    type Error = WtError;

    async fn accept_uni(&self) -> Result<WtRecvStream, WtError> {
        let recv = self
            .shared
            .conn
            .accept_uni()
            .await
            .map_err(|e| self.shared.conn_err(e))?;
        Ok(self.shared.recv(recv))
    }
    async fn accept_bi(&self) -> Result<(WtSendStream, WtRecvStream), WtError> {
        let (send, recv) = self
            .shared
            .conn
            .accept_bi()
            .await
            .map_err(|e| self.shared.conn_err(e))?;
        Ok((self.shared.send(send), self.shared.recv(recv)))
    }
    async fn open_bi(&self) -> Result<(WtSendStream, WtRecvStream), WtError> {
        let opening = self
            .shared
            .conn
            .open_bi()
            .await
            .map_err(|e| self.shared.conn_err(e))?;
        let (send, recv) = opening.await.map_err(|e| self.shared.opening_err(e))?;
        Ok((self.shared.send(send), self.shared.recv(recv)))
    }
    async fn open_uni(&self) -> Result<WtSendStream, WtError> {
        let opening = self
            .shared
            .conn
            .open_uni()
            .await
            .map_err(|e| self.shared.conn_err(e))?;
        let send = opening.await.map_err(|e| self.shared.opening_err(e))?;
        Ok(self.shared.send(send))
    }
    fn send_datagram(&self, payload: Bytes) -> Result<(), WtError> {
        self.shared
            .conn
            .send_datagram(payload)
            .map_err(|e| match e {
                SendDatagramError::NotConnected => self.shared.lost(),
                SendDatagramError::TooLarge => WtError::DatagramTooLarge,
                SendDatagramError::UnsupportedByPeer => WtError::DatagramUnsupported,
            })
    }
    async fn recv_datagram(&self) -> Result<Bytes, WtError> {
        let datagram = self
            .shared
            .conn
            .receive_datagram()
            .await
            .map_err(|e| self.shared.conn_err(e))?;
        Ok(datagram.payload())
    }
    fn max_datagram_size(&self) -> usize {
        self.shared.conn.max_datagram_size().unwrap_or(0)
    }
    fn protocol(&self) -> Option<&str> {
        self.shared.protocol.as_deref()
    }
    fn close(&self, code: u32, reason: &str) {
        let _ = self.shared.close.set((code, reason.to_owned()));
        // wtransport 0.7.2 cannot send the CLOSE_WEBTRANSPORT_SESSION capsule: close QUIC with the mapped code.
        let code = VarInt::try_from_u64(error_to_http3(code)).unwrap_or(VarInt::MAX);
        self.shared.conn.close(code, reason.as_bytes());
    }
    async fn closed(&self) -> WtError {
        let err = self.shared.conn.closed().await;
        self.shared.conn_err(err)
    }
}

/// The send half of a stream. Dropping it finishes the stream (quinn's default).
pub struct WtSendStream {
    inner: wtransport::SendStream,
    shared: Arc<Shared>,
}

impl web_transport_trait::SendStream for WtSendStream {
    type Error = WtError;
    async fn write(&mut self, buf: &[u8]) -> Result<usize, WtError> {
        // quinn's write is cancel safe: bytes count as written only once it returns Ok(n).
        self.inner
            .quic_stream_mut()
            .write(buf)
            .await
            .map_err(|e| self.shared.write_err(e))
    }
    fn set_priority(&mut self, order: u8) {
        self.inner.set_priority(super::data_priority(order));
    }
    fn finish(&mut self) -> Result<(), WtError> {
        // wtransport's own finish() is async (it waits for the ACK); the trait's is not.
        self.inner
            .quic_stream_mut()
            .finish()
            .map_err(|_| WtError::ClosedStream)
    }
    fn reset(&mut self, code: u32) {
        let _ = self.inner.quic_stream_mut().reset(quic_code(code));
    }
    async fn closed(&mut self) -> Result<(), WtError> {
        match self.inner.quic_stream().stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(WtError::Stopped(stream_code(code))),
            Err(quinn::StoppedError::ConnectionLost(e)) => Err(self.shared.conn_err(e.into())),
            Err(quinn::StoppedError::ZeroRttRejected) => Err(WtError::Proto),
        }
    }
}

/// The receive half of a stream. Dropping it sends STOP_SENDING with WebTransport code 0.
pub struct WtRecvStream {
    inner: wtransport::RecvStream,
    shared: Arc<Shared>,
}

impl web_transport_trait::RecvStream for WtRecvStream {
    type Error = WtError;
    async fn read(&mut self, dst: &mut [u8]) -> Result<Option<usize>, WtError> {
        self.inner
            .quic_stream_mut()
            .read(dst)
            .await
            .map_err(|e| self.shared.read_err(e))
    }
    // moq-transport reads only through this, so avoid the default's 8 KiB copy.
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, WtError> {
        let chunk = self.inner.quic_stream_mut().read_chunk(max, true).await;
        chunk
            .map(|c| c.map(|c| c.bytes))
            .map_err(|e| self.shared.read_err(e))
    }
    fn stop(&mut self, code: u32) {
        let _ = self.inner.quic_stream_mut().stop(quic_code(code));
    }
    async fn closed(&mut self) -> Result<(), WtError> {
        match self.inner.quic_stream_mut().received_reset().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(WtError::Reset(stream_code(code))),
            Err(quinn::ResetError::ConnectionLost(e)) => Err(self.shared.conn_err(e.into())),
            Err(quinn::ResetError::ZeroRttRejected) => Err(WtError::Proto),
        }
    }
}

impl Drop for WtRecvStream {
    fn drop(&mut self) {
        // quinn's drop would send STOP_SENDING(0), outside the WebTransport range.
        // This does nothing if the stream was fully read or already stopped.
        let _ = self.inner.quic_stream_mut().stop(quic_code(0));
    }
}
