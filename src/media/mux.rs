//! Fragmented MP4 out: an init segment for a set of tracks, then one `moof` + `mdat` per group
//! of frames, which ffmpeg, ffprobe, ffplay and browsers (MSE) read. Frames arrive knowing only
//! their presentation time (the capture timestamp), so decode times are rebuilt per group: the
//! k-th decode time is the k-th smallest presentation time, shifted so no frame is presented
//! before it is decoded (B-frames then get negative composition offsets, `trun` version 1).

use bytes::Bytes;
use mp4_atom::{Codec, Encode};

use super::codec::Kind;

/// A track of the output.
#[derive(Debug, Clone)]
pub struct Track {
    pub id: u32,
    pub kind: Kind,
    pub timescale: u32,
    pub entry: Codec,
}

/// A frame of the output, times in its track's timescale.
#[derive(Debug, Clone)]
pub struct Sample {
    pub dts: u64,
    pub duration: u32,
    /// Presentation time minus decode time.
    pub cts: i32,
    pub keyframe: bool,
    pub data: Bytes,
}

fn fourcc(s: &[u8; 4]) -> mp4_atom::FourCC {
    mp4_atom::FourCC::new(s)
}

/// `ftyp` and `moov` for `tracks`.
pub fn init_segment(tracks: &[Track]) -> mp4_atom::Result<Vec<u8>> {
    let mut out = Vec::new();
    mp4_atom::Ftyp {
        major_brand: fourcc(b"iso6"),
        minor_version: 512,
        compatible_brands: vec![fourcc(b"iso6"), fourcc(b"cmfc"), fourcc(b"mp41")],
    }
    .encode(&mut out)?;
    let trak = tracks.iter().map(trak).collect();
    mp4_atom::Moov {
        mvhd: mp4_atom::Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: tracks.iter().map(|t| t.id).max().unwrap_or(0) + 1,
            ..Default::default()
        },
        mvex: Some(mp4_atom::Mvex {
            mehd: None,
            trex: tracks
                .iter()
                .map(|t| mp4_atom::Trex {
                    track_id: t.id,
                    default_sample_description_index: 1,
                    ..Default::default()
                })
                .collect(),
        }),
        trak,
        ..Default::default()
    }
    .encode(&mut out)?;
    Ok(out)
}

fn trak(t: &Track) -> mp4_atom::Trak {
    let video = t.kind == Kind::Video;
    let (width, height) = match &t.entry {
        Codec::Avc1(c) => (c.visual.width, c.visual.height),
        Codec::Hvc1(c) => (c.visual.width, c.visual.height),
        Codec::Hev1(c) => (c.visual.width, c.visual.height),
        Codec::Vp08(c) => (c.visual.width, c.visual.height),
        Codec::Vp09(c) => (c.visual.width, c.visual.height),
        Codec::Av01(c) => (c.visual.width, c.visual.height),
        _ => (0, 0),
    };
    mp4_atom::Trak {
        tkhd: mp4_atom::Tkhd {
            track_id: t.id,
            enabled: true,
            in_movie: true,
            volume: if video { 0.into() } else { 1.into() },
            width: mp4_atom::FixedPoint::new(width, 0),
            height: mp4_atom::FixedPoint::new(height, 0),
            ..Default::default()
        },
        mdia: mp4_atom::Mdia {
            mdhd: mp4_atom::Mdhd {
                timescale: t.timescale,
                language: "und".into(),
                ..Default::default()
            },
            hdlr: mp4_atom::Hdlr {
                handler: fourcc(if video { b"vide" } else { b"soun" }),
                name: if video {
                    "roomcast video"
                } else {
                    "roomcast audio"
                }
                .into(),
            },
            minf: mp4_atom::Minf {
                vmhd: video.then(mp4_atom::Vmhd::default),
                smhd: (!video).then(mp4_atom::Smhd::default),
                dinf: mp4_atom::Dinf {
                    dref: mp4_atom::Dref {
                        entries: vec![mp4_atom::Url::default().into()],
                    },
                },
                stbl: mp4_atom::Stbl {
                    stsd: mp4_atom::Stsd {
                        codecs: vec![t.entry.clone()],
                    },
                    stco: Some(mp4_atom::Stco::default()),
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// One `moof` + `mdat` holding `samples` of track `track`.
pub fn fragment(sequence: u32, track: u32, samples: &[Sample]) -> mp4_atom::Result<Vec<u8>> {
    let Some(first) = samples.first() else {
        return Ok(vec![]);
    };
    let mut moof = mp4_atom::Moof {
        mfhd: mp4_atom::Mfhd {
            sequence_number: sequence,
        },
        traf: vec![mp4_atom::Traf {
            tfhd: mp4_atom::Tfhd {
                track_id: track,
                default_base_is_moof: true,
                ..Default::default()
            },
            tfdt: Some(mp4_atom::Tfdt {
                base_media_decode_time: first.dts,
            }),
            trun: vec![mp4_atom::Trun {
                data_offset: Some(0),
                samples: mp4_atom::TrunSamples::Explicit(
                    samples
                        .iter()
                        .map(|s| mp4_atom::TrunEntry {
                            duration: Some(s.duration),
                            size: Some(s.data.len() as u32),
                            // sample_depends_on 2 for sync samples, non-sync flag otherwise.
                            flags: Some(if s.keyframe { 0x0200_0000 } else { 0x0101_0000 }),
                            cts: Some(s.cts.into()),
                        })
                        .collect(),
                ),
            }],
            ..Default::default()
        }],
    };
    let mut head = Vec::new();
    moof.encode(&mut head)?;
    let offset = head.len() + 8;
    moof.traf[0].trun[0].data_offset = Some(offset as i32);
    head.clear();
    moof.encode(&mut head)?;
    let size: usize = samples.iter().map(|s| s.data.len()).sum();
    head.extend_from_slice(&((size + 8) as u32).to_be_bytes());
    head.extend_from_slice(b"mdat");
    for s in samples {
        head.extend_from_slice(&s.data);
    }
    Ok(head)
}

/// Decode times for frames given in decode order by presentation time: the k-th is the k-th
/// smallest presentation time less the track's reorder `delay`. `delay` only grows: it becomes
/// the largest shift any group needed so that no frame is presented before it is decoded, and
/// one delay for the whole track keeps consecutive groups in order. Decode times stay strictly
/// increasing and not before `floor` (the end of the previous group).
pub fn decode_times(pts: &[i64], delay: &mut i64, floor: Option<i64>) -> Vec<i64> {
    let mut sorted = pts.to_vec();
    sorted.sort_unstable();
    let shift = sorted
        .iter()
        .zip(pts)
        .map(|(s, p)| s.saturating_sub(*p))
        .max()
        .unwrap_or(0);
    *delay = (*delay).max(shift);
    let mut out: Vec<i64> = Vec::with_capacity(pts.len());
    for s in sorted {
        let mut d = s.saturating_sub(*delay);
        if let Some(prev) = out.last() {
            d = d.max(prev + 1);
        } else if let Some(f) = floor {
            d = d.max(f);
        }
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_times_never_follow_presentation_and_keep_their_order() {
        // I0 P3 B1 B2 in decode order, 1 unit per frame: one frame of reorder delay.
        let mut delay = 0;
        let pts = [10, 13, 11, 12];
        let dts = decode_times(&pts, &mut delay, None);
        assert_eq!((dts.clone(), delay), (vec![9, 10, 11, 12], 1));
        assert!(dts.iter().zip(&pts).all(|(d, p)| d <= p));
        // The next group keeps the delay, so it follows the previous one without a gap or a
        // frame decoded after it is shown, also when the previous group ended at its start.
        let pts = [14, 17, 15, 16];
        let dts = decode_times(&pts, &mut delay, Some(13));
        assert_eq!(dts, vec![13, 14, 15, 16]);
        assert!(dts.iter().zip(&pts).all(|(d, p)| d <= p));
        // A deeper reorder (I P B b b, 3000 a frame) after a floor: decode <= presentation.
        let mut delay = 0;
        let pts = [0, 12000, 6000, 3000, 9000];
        let dts = decode_times(&pts, &mut delay, Some(0));
        assert!(dts.windows(2).all(|w| w[0] < w[1]), "{dts:?}");
        assert!(dts.iter().zip(&pts).all(|(d, p)| d <= p), "{dts:?}");
        // No reordering: decode = presentation, kept after the floor and strictly increasing.
        let mut delay = 0;
        assert_eq!(decode_times(&[0, 1, 2], &mut delay, None), vec![0, 1, 2]);
        assert_eq!(decode_times(&[5, 6, 7], &mut delay, Some(5)), vec![5, 6, 7]);
        assert_eq!(decode_times(&[8, 8, 9], &mut delay, None), vec![8, 9, 10]);
    }
}
