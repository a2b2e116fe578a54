//! MoQ sessions.
