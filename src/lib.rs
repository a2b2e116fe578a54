//! roomcast: a QUIC/WebTransport media relay with real-time rooms, speaking IETF Media over
//! QUIC Transport draft-18 (through the `moq-transport` crate).
//!
//! # Layout
//! - [`core`]: the routing core, free of sockets and clocks: the room namespace layout,
//!   per-track fan-out buffers ([`core::track`]) and the registry of published namespaces and
//!   tracks ([`core::registry`]).
//! - [`auth`]: signed tokens ([`auth::token`]), the server secret and per-request checks
//!   ([`auth::scope`]).
//! - [`transport`]: TLS material and the two QUIC front doors, WebTransport (HTTP/3) and raw
//!   QUIC, both quinn endpoints with `web-transport-quinn` sessions.
//! - [`relay`]: MoQ sessions: authenticates each one, then routes its requests through the
//!   core, enforcing the token scope on every request.
//! - [`api`]: HTTP (axum): health, certificate hash, metrics, the web client in `web/`.
//! - [`cli`]: the `roomcast` command: `serve`, `token`, `publish`, `subscribe`, `bench`, `impair`.
//! - [`impair`]: a seeded UDP impairment proxy (loss, delay with jitter, duplication, rate
//!   limit) for testing and measuring on bad paths without netem.
//! - [`client`]: a draft-18 client (raw QUIC or WebTransport) for the benchmark and tests.
//! - [`config`]: the one configuration type (file, environment, flags).
//! - [`metrics`]: Prometheus metrics.
//! - [`store`]: the embedded SQLite store (users, rooms, roles, bans, invites, chat).
//! - [`media`]: media formats at the edges: the catalog, codec strings, H.264 framings, and
//!   fragmented MP4 in and out (`mp4-atom`) for `roomcast publish` and `roomcast subscribe`.
//! - [`webrtc`]: WHIP ingest: WebRTC publishers (str0m, ICE-lite, one UDP port) bridged into
//!   rooms as ordinary participants.
//! - [`server`]: starts and stops a whole relay (used by `serve` and the tests).

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod core;
pub mod impair;
pub mod media;
pub mod metrics;
pub mod relay;
pub mod server;
pub mod store;
pub mod transport;
pub mod webhooks;
pub mod webrtc;
