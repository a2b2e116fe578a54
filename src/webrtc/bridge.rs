//! Frames from a WebRTC publisher to MoQ objects: the participant's `catalog`, `video` and
//! `audio` tracks in the format of docs/protocol.md, as the browser publisher writes them.
//!
//! - Video: one group per keyframe interval, frames in decode order as objects 0, 1, 2...;
//!   nothing before the first keyframe, and after a gap (lost packets str0m could not repair)
//!   nothing until the next keyframe, for which the caller asks the publisher.
//! - Audio: every packet one object, a group per 50 (one second of 20 ms packets).
//! - Catalog: a new group with one JSON object whenever the tracks' description changes.
//! - Every object carries the capture timestamp extension (0x06): wall-clock microseconds,
//!   taken from the RTP timeline of each track, anchored at the arrival of its first packet
//!   (not at the frame's completion, so a big first keyframe does not shift video against
//!   audio).
//!
//! Plain data, no sockets: the session loop feeds it.

use bytes::{Bytes, BytesMut};
use moq_transport::coding::{Encode, KeyValuePair};
use moq_transport::data::ExtensionHeaders;

use crate::core::track::{AppendError, Object, TrackProducer};
use crate::relay::Relay;

/// Capture timestamp extension type (docs/protocol.md).
const CAPTURE_TIMESTAMP: u64 = 0x06;
/// Audio packets per group.
const AUDIO_GROUP: u64 = 50;
/// A track timeline that drifts from the wall clock by more than this is anchored again (an
/// encoder restart, a new SSRC).
const REANCHOR_US: u64 = 5_000_000;

/// The video codecs bridged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 frames as they are (WebCodecs `vp8`).
    Vp8,
    /// H.264 in Annex B with the parameter sets in every keyframe (WebCodecs `avc1.*`
    /// without a description), see [`crate::media::h264`].
    H264,
}

/// What the caller should do after a video frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Fine,
    /// Ask the publisher for a keyframe (PLI): video waits for one.
    NeedKeyframe,
}

/// Maps one track's media time to wall-clock microseconds.
#[derive(Debug, Default)]
struct Clock {
    anchor: Option<(u64, u64)>,
    last: u64,
}

impl Clock {
    /// Wall-clock µs for media time `media_us`, seen at wall-clock `now_us`; strictly
    /// increasing.
    fn at(&mut self, media_us: u64, now_us: u64) -> u64 {
        let (m0, w0) = *self.anchor.get_or_insert((media_us, now_us));
        let mut at = w0.saturating_add(media_us.saturating_sub(m0));
        if media_us < m0 || at.abs_diff(now_us) > REANCHOR_US {
            self.anchor = Some((media_us, now_us));
            at = now_us;
        }
        self.last = at.max(self.last + 1);
        self.last
    }
}

/// One participant's bridged tracks.
pub struct Bridge {
    room: String,
    identity: String,
    generation: u64,
    catalog: TrackProducer,
    video: TrackProducer,
    audio: TrackProducer,
    catalog_group: u64,
    /// The catalog last published, to publish only changes.
    described: Option<serde_json::Value>,
    has_audio: bool,
    stereo: bool,
    /// Codec string, width and height in the catalog.
    video_format: Option<(String, u32, u32)>,
    h264: crate::media::h264::ParameterSets,
    video_group: Option<u64>,
    next_video_group: u64,
    video_object: u64,
    audio_group: u64,
    audio_object: u64,
    video_clock: Clock,
    audio_clock: Clock,
    /// Objects appended, for the session's log and metrics.
    pub frames: u64,
}

impl Bridge {
    /// Publishes the participant's tracks; `has_audio` when the offer negotiated audio.
    pub fn new(relay: &Relay, room: &str, identity: &str, has_audio: bool, stereo: bool) -> Self {
        let (mut producers, generation) =
            relay.publish_participant(room, identity, &["catalog", "video", "audio"]);
        let audio = producers.pop().expect("three tracks");
        let video = producers.pop().expect("three tracks");
        let catalog = producers.pop().expect("three tracks");
        let mut bridge = Self {
            room: room.to_owned(),
            identity: identity.to_owned(),
            generation,
            catalog,
            video,
            audio,
            catalog_group: 0,
            described: None,
            has_audio,
            stereo,
            video_format: None,
            h264: crate::media::h264::ParameterSets::default(),
            video_group: None,
            next_video_group: 0,
            video_object: 0,
            audio_group: 0,
            audio_object: 0,
            video_clock: Clock::default(),
            audio_clock: Clock::default(),
            frames: 0,
        };
        bridge.describe(crate::client::now_micros());
        bridge
    }

    /// Whether its publication is still the participant's current one (a newer session of
    /// the same participant replaces it).
    pub fn current(&self, relay: &Relay) -> bool {
        relay.publication_generation(&self.room, &self.identity) == Some(self.generation)
    }

    /// Takes the publication back (the session ended).
    pub fn end(&self, relay: &Relay) {
        relay.unpublish_participant(&self.room, &self.identity, self.generation);
    }

    /// The catalog for what is known now; a new catalog group if it changed.
    fn describe(&mut self, now_us: u64) {
        let mut tracks = vec![];
        if let Some((codec, width, height)) = &self.video_format {
            tracks.push(serde_json::json!({
                "name": "video", "packaging": "loc", "renderGroup": 1,
                "selectionParams": {"codec": codec, "width": width, "height": height},
            }));
        }
        if self.has_audio {
            tracks.push(serde_json::json!({
                "name": "audio", "packaging": "loc", "renderGroup": 1,
                "selectionParams": {
                    "codec": "opus", "samplerate": 48000,
                    "channelConfig": if self.stereo { "2" } else { "1" },
                },
            }));
        }
        let catalog = serde_json::json!({
            "version": 1, "streamingFormat": 1, "streamingFormatVersion": "0.2", "tracks": tracks,
        });
        if self.described.as_ref() == Some(&catalog) {
            return;
        }
        let group = self.catalog_group;
        self.catalog_group += 1;
        let object = Object {
            subgroup: 0,
            id: 0,
            extensions: stamp(now_us),
            payload: Bytes::from(catalog.to_string()),
        };
        if self.catalog.append(group, object).is_ok() {
            self.catalog.finish_group(group);
        }
        self.described = Some(catalog);
    }

    /// A depacketized video frame. `media_us` is its RTP time in µs (wrap handled by str0m),
    /// `contiguous` false after packets were lost for good.
    pub fn video(
        &mut self,
        codec: VideoCodec,
        keyframe: bool,
        contiguous: bool,
        data: Bytes,
        media_us: u64,
        now_us: u64,
    ) -> Next {
        if !contiguous {
            // The current group cannot decode on: end it and wait for a keyframe.
            self.close_video_group();
        }
        let mut data = data;
        if codec == VideoCodec::H264 {
            self.h264.observe(&data);
        }
        if keyframe {
            let format = match codec {
                VideoCodec::Vp8 => vp8_size(&data).map(|(w, h)| ("vp8".to_owned(), w, h)),
                VideoCodec::H264 => match self.h264.complete(data.clone()) {
                    Some(whole) => {
                        data = whole;
                        self.h264
                            .format()
                            .map(|f| (f.codec.clone(), f.width, f.height))
                    }
                    // No parameter sets yet: nothing decodes until a keyframe brings them.
                    None => return Next::NeedKeyframe,
                },
            };
            if let Some(format) = format {
                if self.video_format.as_ref() != Some(&format) {
                    self.video_format = Some(format);
                    self.describe(now_us);
                }
            }
            self.close_video_group();
            let group = self.next_video_group;
            self.next_video_group += 1;
            self.video_group = Some(group);
            self.video_object = 0;
        }
        let Some(group) = self.video_group else {
            return Next::NeedKeyframe;
        };
        let at = self.video_clock.at(media_us, now_us);
        let object = Object {
            subgroup: 0,
            id: self.video_object,
            extensions: stamp(at),
            payload: data,
        };
        match self.video.append(group, object) {
            Ok(_) => {
                self.video_object += 1;
                self.frames += 1;
                Next::Fine
            }
            Err(AppendError::Closed) => Next::Fine,
            Err(e) => {
                tracing::debug!(group, error = %e, "video group dropped");
                self.video.abort_group(group);
                self.video_group = None;
                Next::NeedKeyframe
            }
        }
    }

    /// Subscribers reading the video now.
    pub fn video_readers(&self) -> usize {
        self.video.reader_count()
    }

    fn close_video_group(&mut self) {
        if let Some(g) = self.video_group.take() {
            self.video.finish_group(g);
        }
    }

    /// An Opus packet.
    pub fn audio(&mut self, data: Bytes, media_us: u64, now_us: u64) {
        let at = self.audio_clock.at(media_us, now_us);
        let object = Object {
            subgroup: 0,
            id: self.audio_object,
            extensions: stamp(at),
            payload: data,
        };
        if self.audio.append(self.audio_group, object).is_ok() {
            self.frames += 1;
        }
        self.audio_object += 1;
        if self.audio_object == AUDIO_GROUP {
            self.audio.finish_group(self.audio_group);
            self.audio_group += 1;
            self.audio_object = 0;
        }
    }
}

/// The encoded extension headers holding capture timestamp `us`.
fn stamp(us: u64) -> Bytes {
    let mut b = BytesMut::new();
    let headers = ExtensionHeaders(vec![KeyValuePair::new_int(CAPTURE_TIMESTAMP, us)]);
    match headers.encode(&mut b) {
        Ok(()) => b.freeze(),
        Err(_) => Bytes::new(),
    }
}

/// Width and height of a VP8 keyframe (RFC 6386 section 9.1), if `frame` is one.
pub fn vp8_size(frame: &[u8]) -> Option<(u32, u32)> {
    let keyframe = frame.first()? & 1 == 0;
    if !keyframe || frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([*frame.get(6)?, *frame.get(7)?]) & 0x3fff;
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    (w > 0 && h > 0).then_some((w.into(), h.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_give_their_size_and_nothing_else_does() {
        let mut key = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        key.extend_from_slice(&640u16.to_le_bytes());
        key.extend_from_slice(&(360u16 | 0x4000).to_le_bytes()); // scaling bits ignored
        assert_eq!(vp8_size(&key), Some((640, 360)));
        let mut inter = key.clone();
        inter[0] |= 1;
        assert_eq!(vp8_size(&inter), None);
        assert_eq!(vp8_size(&key[..7]), None, "truncated");
        assert_eq!(vp8_size(&[]), None);
    }

    #[test]
    fn the_clock_follows_media_time_and_never_goes_back() {
        let mut c = Clock::default();
        assert_eq!(c.at(1_000, 50_000_000), 50_000_000);
        assert_eq!(
            c.at(21_000, 50_020_500),
            50_020_000,
            "media time, not arrival"
        );
        assert_eq!(c.at(21_000, 50_030_000), 50_020_001, "strictly increasing");
        // A jump of the media clock (encoder restart) anchors again.
        assert_eq!(c.at(999_000_000, 50_040_000), 50_040_000);
    }
}
