//! Codecs: from an MP4 sample entry to the catalog's codec string and decoder configuration
//! (what WebCodecs takes), and back from a catalog track to a sample entry for writing MP4.

use mp4_atom::{Atom, Codec, Encode};

use super::catalog::{SelectionParams, Track};

/// What a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Video,
    Audio,
}

/// A track's format as the catalog states it.
#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    pub kind: Kind,
    pub params: SelectionParams,
    /// The decoder configuration (catalog `initData`), if the codec has one out of band.
    pub init: Option<Vec<u8>>,
}

/// Why a sample entry or catalog track cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("unsupported codec {0}: roomcast relays H.264, H.265, VP8, VP9 and AV1 video, AAC and Opus audio")]
    Unsupported(String),
    #[error("bad decoder configuration for {0}: {1}")]
    BadConfig(String, String),
}

/// The body of an atom (without its 8-byte header): what the catalog's `initData` holds.
fn body<T: Atom>(atom: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::new();
    atom.encode(&mut buf)
        .map_err(|e| CodecError::BadConfig(T::KIND.to_string(), e.to_string()))?;
    Ok(buf.split_off(8))
}

/// The catalog format of an MP4 sample entry.
pub fn from_sample_entry(entry: &Codec) -> Result<Format, CodecError> {
    let video = |codec: String, width: u16, height: u16, init: Option<Vec<u8>>| Format {
        kind: Kind::Video,
        params: SelectionParams {
            codec,
            width: Some(width.into()),
            height: Some(height.into()),
            ..Default::default()
        },
        init,
    };
    let audio = |codec: String, rate: u32, channels: u16, init: Option<Vec<u8>>| Format {
        kind: Kind::Audio,
        params: SelectionParams {
            codec,
            samplerate: Some(rate),
            channel_config: Some(channels.to_string()),
            ..Default::default()
        },
        init,
    };
    Ok(match entry {
        Codec::Avc1(a) => {
            let c = &a.avcc;
            let codec = format!(
                "avc1.{:02x}{:02x}{:02x}",
                c.avc_profile_indication, c.profile_compatibility, c.avc_level_indication
            );
            video(codec, a.visual.width, a.visual.height, Some(body(c)?))
        }
        Codec::Hvc1(h) => video(
            hevc_codec("hvc1", &h.hvcc),
            h.visual.width,
            h.visual.height,
            Some(body(&h.hvcc)?),
        ),
        Codec::Hev1(h) => video(
            hevc_codec("hev1", &h.hvcc),
            h.visual.width,
            h.visual.height,
            Some(body(&h.hvcc)?),
        ),
        Codec::Vp08(v) => video("vp8".into(), v.visual.width, v.visual.height, None),
        Codec::Vp09(v) => {
            let c = &v.vpcc;
            let codec = format!("vp09.{:02}.{:02}.{:02}", c.profile, c.level, c.bit_depth);
            video(codec, v.visual.width, v.visual.height, None)
        }
        Codec::Av01(a) => {
            let c = &a.av1c;
            let depth = match (c.high_bitdepth, c.twelve_bit) {
                (true, true) => 12,
                (true, false) => 10,
                _ => 8,
            };
            let codec = format!(
                "av01.{}.{:02}{}.{:02}",
                c.seq_profile,
                c.seq_level_idx_0,
                if c.seq_tier_0 { 'H' } else { 'M' },
                depth
            );
            video(codec, a.visual.width, a.visual.height, Some(body(c)?))
        }
        Codec::Mp4a(m) => {
            let dc = &m.esds.es_desc.dec_config;
            let rate = m.audio.sample_rate.integer() as u32;
            let channels = m.audio.channel_count;
            match dc.object_type_indication {
                0x40 => {
                    let asc = dc
                        .dec_specific
                        .as_ref()
                        .map(|d| d.raw.clone())
                        .filter(|i| !i.is_empty())
                        .ok_or_else(|| {
                            CodecError::BadConfig("mp4a".into(), "no AudioSpecificConfig".into())
                        })?;
                    let aot = asc[0] >> 3;
                    audio(format!("mp4a.40.{aot}"), rate, channels, Some(asc))
                }
                0x69 | 0x6b => return Err(CodecError::Unsupported("MP3 (mp4a.6b)".into())),
                oti => return Err(CodecError::Unsupported(format!("mp4a.{oti:02x}"))),
            }
        }
        Codec::Opus(o) => audio(
            "opus".into(),
            48000,
            o.dops.output_channel_count.max(1).into(),
            None,
        ),
        other => {
            let name = match other {
                Codec::Unknown(kind, _) => kind.to_string(),
                known => format!("{known:?}")
                    .split('(')
                    .next()
                    .unwrap_or("unknown")
                    .to_lowercase(),
            };
            return Err(CodecError::Unsupported(name));
        }
    })
}

/// The RFC 6381 codec string of an HEVC configuration (ISO/IEC 14496-15 Annex E).
fn hevc_codec(prefix: &str, c: &mp4_atom::Hvcc) -> String {
    let space = match c.general_profile_space {
        1 => "A",
        2 => "B",
        3 => "C",
        _ => "",
    };
    let compat = u32::from_be_bytes(c.general_profile_compatibility_flags).reverse_bits();
    let mut s = format!(
        "{prefix}.{space}{}.{compat:X}.{}{}",
        c.general_profile_idc,
        if c.general_tier_flag { 'H' } else { 'L' },
        c.general_level_idc
    );
    let flags = c.general_constraint_indicator_flags;
    let used = flags.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    for b in &flags[..used] {
        s.push_str(&format!(".{b:X}"));
    }
    s
}

/// An MP4 sample entry for a catalog track. `init` overrides the catalog's `initData` (for
/// H.264 in Annex B form, the avcC built from the stream's own SPS and PPS).
pub fn to_sample_entry(track: &Track, init: Option<Vec<u8>>) -> Result<Codec, CodecError> {
    let p = &track.selection_params;
    let codec = p.codec.as_str();
    let init = match init {
        Some(i) => Some(i),
        None => track
            .init()
            .map_err(|e| CodecError::BadConfig(codec.into(), e.to_string()))?,
    };
    let bad = |e: mp4_atom::Error| CodecError::BadConfig(codec.into(), e.to_string());
    let need = || {
        init.clone()
            .ok_or_else(|| CodecError::BadConfig(codec.into(), "no decoder configuration".into()))
    };
    let visual = mp4_atom::Visual {
        data_reference_index: 1,
        width: p.width.unwrap_or(0).min(u16::MAX.into()) as u16,
        height: p.height.unwrap_or(0).min(u16::MAX.into()) as u16,
        ..Default::default()
    };
    let audio = |rate: u32| mp4_atom::Audio {
        data_reference_index: 1,
        channel_count: p.channels(),
        sample_size: 16,
        sample_rate: mp4_atom::FixedPoint::new(rate.min(u16::MAX.into()) as u16, 0),
    };
    let family = codec.split('.').next().unwrap_or("");
    Ok(match family {
        "avc1" | "avc3" => Codec::Avc1(mp4_atom::Avc1 {
            visual,
            avcc: mp4_atom::Avcc::decode_body(&mut need()?.as_slice()).map_err(bad)?,
            ..Default::default()
        }),
        "hvc1" => Codec::Hvc1(mp4_atom::Hvc1 {
            visual,
            hvcc: mp4_atom::Hvcc::decode_body(&mut need()?.as_slice()).map_err(bad)?,
            ..Default::default()
        }),
        "hev1" => Codec::Hev1(mp4_atom::Hev1 {
            visual,
            hvcc: mp4_atom::Hvcc::decode_body(&mut need()?.as_slice()).map_err(bad)?,
            ..Default::default()
        }),
        "vp8" | "vp08" => Codec::Vp08(mp4_atom::Vp08 {
            visual,
            vpcc: mp4_atom::VpcC {
                profile: 0,
                level: 10,
                bit_depth: 8,
                chroma_subsampling: 1,
                ..Default::default()
            },
            ..Default::default()
        }),
        "vp09" => {
            let n: Vec<u8> = codec
                .split('.')
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            Codec::Vp09(mp4_atom::Vp09 {
                visual,
                vpcc: mp4_atom::VpcC {
                    profile: n.first().copied().unwrap_or(0),
                    level: n.get(1).copied().unwrap_or(10),
                    bit_depth: n.get(2).copied().unwrap_or(8),
                    chroma_subsampling: 1,
                    ..Default::default()
                },
                ..Default::default()
            })
        }
        "av01" => Codec::Av01(mp4_atom::Av01 {
            visual,
            av1c: mp4_atom::Av1c::decode_body(&mut need()?.as_slice()).map_err(bad)?,
            ..Default::default()
        }),
        "mp4a" => {
            let asc = need()?;
            Codec::Mp4a(mp4_atom::Mp4a {
                audio: audio(p.samplerate.unwrap_or(48000)),
                esds: mp4_atom::Esds {
                    es_desc: mp4_atom::esds::EsDescriptor {
                        es_id: 1,
                        depends_on_es_id: None,
                        url: None,
                        ocr_es_id: None,
                        stream_priority: 0,
                        dec_config: mp4_atom::esds::DecoderConfig {
                            object_type_indication: 0x40,
                            stream_type: 5,
                            up_stream: 0,
                            dec_specific: Some(mp4_atom::esds::DecoderSpecific {
                                raw: asc,
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        sl_config: mp4_atom::esds::SLConfig::default(),
                    },
                },
                btrt: None,
                taic: None,
            })
        }
        "opus" => Codec::Opus(mp4_atom::Opus {
            audio: audio(48000),
            dops: mp4_atom::Dops {
                output_channel_count: p.channels().min(255) as u8,
                pre_skip: 312,
                input_sample_rate: p.samplerate.unwrap_or(48000),
                output_gain: 0,
                channel_mapping: None,
            },
            btrt: None,
        }),
        _ => return Err(CodecError::Unsupported(codec.into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hevc_codec_strings_follow_annex_e() {
        let c = mp4_atom::Hvcc {
            general_profile_idc: 1,
            general_profile_compatibility_flags: [0x60, 0, 0, 0],
            general_level_idc: 93,
            general_constraint_indicator_flags: [0xb0, 0, 0, 0, 0, 0],
            ..mp4_atom::Hvcc::new()
        };
        assert_eq!(hevc_codec("hvc1", &c), "hvc1.1.6.L93.B0");
    }

    #[test]
    fn a_catalog_track_and_its_sample_entry_agree_both_ways() {
        let opus = Track::new(
            "audio",
            SelectionParams {
                codec: "opus".into(),
                samplerate: Some(48000),
                channel_config: Some("2".into()),
                ..Default::default()
            },
            None,
        );
        let entry = to_sample_entry(&opus, None).unwrap();
        let back = from_sample_entry(&entry).unwrap();
        assert_eq!(back.params.codec, "opus");
        assert_eq!(back.params.channel_config.as_deref(), Some("2"));

        let vp9 = Track::new(
            "video",
            SelectionParams {
                codec: "vp09.00.10.08".into(),
                width: Some(320),
                height: Some(240),
                ..Default::default()
            },
            None,
        );
        let back = from_sample_entry(&to_sample_entry(&vp9, None).unwrap()).unwrap();
        assert_eq!(back.params.codec, "vp09.00.10.08");
        assert_eq!(
            (back.params.width, back.params.height),
            (Some(320), Some(240))
        );

        let mjpeg = Track::new(
            "video",
            SelectionParams {
                codec: "mjpg".into(),
                ..Default::default()
            },
            None,
        );
        assert_eq!(
            to_sample_entry(&mjpeg, None),
            Err(CodecError::Unsupported("mjpg".into()))
        );
    }
}
