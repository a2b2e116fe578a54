//! The routing core: rooms as namespaces, tracks and fan-out. No sockets, no clocks.

pub mod budget;
pub mod namespace;
pub mod registry;
pub mod track;
