//! Media formats at the edges of the relay: the catalog every publisher describes its tracks
//! with (docs/protocol.md), and fragmented MP4 (CMAF) in and out for `roomcast publish` and
//! `roomcast subscribe`. Boxes are read and written with `mp4-atom`; nothing here touches a
//! socket or the routing core.

pub mod catalog;
pub mod codec;
pub mod demux;
pub mod h264;
pub mod mux;
