//! QUIC front doors and TLS.

pub mod tls;
