//! The catalog (track `catalog`): which tracks a participant publishes and how to decode them.
//! The shape follows the IETF MoQ streaming-format (WARP) catalog; `initData` is the base64 of
//! the decoder configuration WebCodecs takes as `description` (avcC, hvcC, av1C, or the AAC
//! AudioSpecificConfig), absent when the frames carry their own (H.264 in Annex B form, VP8,
//! VP9, Opus).

use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    pub version: u32,
    pub streaming_format: u32,
    pub streaming_format_version: String,
    #[serde(default)]
    pub tracks: Vec<Track>,
}

impl Catalog {
    pub fn new(tracks: Vec<Track>) -> Self {
        Catalog {
            version: 1,
            streaming_format: 1,
            streaming_format_version: "0.2".into(),
            tracks,
        }
    }

    /// The track named `name`, if listed.
    pub fn track(&self, name: &str) -> Option<&Track> {
        self.tracks.iter().find(|t| t.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Track {
    pub name: String,
    #[serde(default = "loc")]
    pub packaging: String,
    #[serde(default)]
    pub render_group: Option<u32>,
    pub selection_params: SelectionParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_data: Option<String>,
}

fn loc() -> String {
    "loc".into()
}

impl Track {
    pub fn new(name: &str, selection_params: SelectionParams, init: Option<&[u8]>) -> Self {
        Track {
            name: name.into(),
            packaging: loc(),
            render_group: Some(1),
            selection_params,
            init_data: init.map(|i| base64::engine::general_purpose::STANDARD.encode(i)),
        }
    }

    /// The decoder configuration, decoded; `Err` if `initData` is not base64.
    pub fn init(&self) -> Result<Option<Vec<u8>>, base64::DecodeError> {
        self.init_data
            .as_deref()
            .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
            .transpose()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectionParams {
    pub codec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framerate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samplerate: Option<u32>,
    /// Channel count, as a string (WARP's `channelConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_config: Option<String>,
}

impl SelectionParams {
    /// Channels from `channelConfig` (1 when absent or not a number).
    pub fn channels(&self) -> u16 {
        self.channel_config
            .as_deref()
            .and_then(|c| c.parse().ok())
            .filter(|&c| c > 0)
            .unwrap_or(1)
    }
}
