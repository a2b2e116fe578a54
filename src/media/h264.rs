//! H.264 in its two framings. As WebRTC delivers it (Annex B: start codes, parameter sets
//! in-band) it is made ready for WebCodecs without a `description`: the codec string and
//! picture size come from the SPS (parsed by `h264-reader`), and every keyframe carries the SPS
//! and PPS in front of its IDR, so a subscriber that starts at any group can decode it. For MP4
//! the same frames become length-prefixed (AVCC) with the parameter sets in the `avcC` box.

use bytes::{Bytes, BytesMut};
use h264_reader::nal::sps::SeqParameterSet;
use h264_reader::rbsp::{decode_nal, BitReader};

const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// The NAL units of an Annex B byte stream, without their start codes.
pub fn nal_units(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = vec![];
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // The next unit's start code, with a leading zero byte if it has four.
            let e = s - 3;
            if e > 0 && stream[e - 1] == 0 {
                e - 1
            } else {
                e
            }
        })
        .chain(std::iter::once(stream.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .filter(|(s, e)| s < e)
        .map(move |(s, e)| &stream[s..e])
}

fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// What the catalog says of an H.264 track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// `avc1.PPCCLL` (RFC 6381).
    pub codec: String,
    pub width: u32,
    pub height: u32,
}

/// The parameter sets last seen on a track.
#[derive(Debug, Default)]
pub struct ParameterSets {
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    format: Option<Format>,
}

impl ParameterSets {
    /// Notes the SPS and PPS in `frame`; the format, once an SPS was read.
    pub fn observe(&mut self, frame: &[u8]) -> Option<&Format> {
        for nal in nal_units(frame) {
            match nal_type(nal) {
                NAL_SPS => {
                    if let Some(f) = format_of(nal) {
                        self.sps = Some(Bytes::copy_from_slice(nal));
                        self.format = Some(f);
                    }
                }
                NAL_PPS => self.pps = Some(Bytes::copy_from_slice(nal)),
                _ => {}
            }
        }
        self.format.as_ref()
    }

    /// The format the last good SPS gave.
    pub fn format(&self) -> Option<&Format> {
        self.format.as_ref()
    }

    /// `keyframe` with the SPS and PPS in front when it lacks them (an encoder that sends
    /// them only at the start, or in packets of their own); `None` while they are unknown.
    pub fn complete(&self, keyframe: Bytes) -> Option<Bytes> {
        let (sps, pps) = (self.sps.as_ref()?, self.pps.as_ref()?);
        let has = |t| nal_units(&keyframe).any(|n| nal_type(n) == t);
        if has(NAL_SPS) && has(NAL_PPS) {
            return Some(keyframe);
        }
        let mut out = BytesMut::with_capacity(keyframe.len() + sps.len() + pps.len() + 8);
        for set in [sps, pps] {
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(set);
        }
        out.extend_from_slice(&keyframe);
        Some(out.freeze())
    }
}

/// An SPS and a PPS NAL unit.
pub type Sets = (Vec<u8>, Vec<u8>);

/// An Annex B frame as an MP4 sample: each NAL unit behind a 4-byte length, parameter sets
/// and access unit delimiters left out (they go in the `avcC` box), plus the SPS and PPS the
/// frame carried, if any.
pub fn to_length_prefixed(frame: &[u8]) -> (Bytes, Option<Sets>) {
    let mut out = BytesMut::with_capacity(frame.len() + 16);
    let (mut sps, mut pps) = (None, None);
    for nal in nal_units(frame) {
        match nal_type(nal) {
            NAL_SPS => sps = Some(nal.to_vec()),
            NAL_PPS => pps = Some(nal.to_vec()),
            NAL_AUD => {}
            _ => {
                out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                out.extend_from_slice(nal);
            }
        }
    }
    (out.freeze(), sps.zip(pps))
}

/// Codec string and size from an SPS NAL unit.
fn format_of(nal: &[u8]) -> Option<Format> {
    let rbsp = decode_nal(nal).ok()?;
    let sps = SeqParameterSet::from_bits(BitReader::new(&rbsp[..])).ok()?;
    let (width, height) = sps.pixel_dimensions().ok()?;
    let head = rbsp.get(..3)?;
    Some(Format {
        codec: format!("avc1.{:02x}{:02x}{:02x}", head[0], head[1], head[2]),
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SPS RBSP (h264-reader's own test vector: High profile, level 1.0, 64x64).
    const SPS_RBSP: &[u8] = &[
        0x64, 0x00, 0x0a, 0xac, 0x72, 0x84, 0x44, 0x26, 0x84, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00,
        0x00, 0xca, 0x3c, 0x48, 0x96, 0x11, 0x80,
    ];
    const PPS: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x33];

    /// The SPS as a NAL unit: header, then the RBSP with emulation prevention bytes.
    fn sps() -> Vec<u8> {
        let mut out = vec![0x67];
        let mut zeros = 0;
        for &b in SPS_RBSP {
            if zeros >= 2 && b <= 3 {
                out.push(3);
                zeros = 0;
            }
            out.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
        }
        out
    }

    fn annexb(units: &[&[u8]]) -> Bytes {
        let mut b = BytesMut::new();
        for u in units {
            b.extend_from_slice(&START_CODE);
            b.extend_from_slice(u);
        }
        b.freeze()
    }

    #[test]
    fn annex_b_frames_become_length_prefixed_with_their_parameter_sets_apart() {
        let frame = annexb(&[&[0x09, 0xf0], &sps(), PPS, IDR]);
        let (sample, sets) = to_length_prefixed(&frame);
        assert_eq!(&sample[..], &[&[0, 0, 0, 5][..], IDR].concat()[..]);
        assert_eq!(sets, Some((sps(), PPS.to_vec())));
        assert_eq!(to_length_prefixed(&annexb(&[IDR])).1, None);
    }

    #[test]
    fn units_are_split_at_three_and_four_byte_start_codes() {
        let sps = sps();
        let mut s = annexb(&[&sps, PPS]).to_vec();
        s.extend_from_slice(&[0, 0, 1]);
        s.extend_from_slice(IDR);
        let units: Vec<_> = nal_units(&s).collect();
        assert_eq!(units, vec![&sps[..], PPS, IDR]);
        assert_eq!(nal_units(&[0, 0]).count(), 0);
    }

    #[test]
    fn the_sps_gives_codec_and_size_and_keyframes_get_the_parameter_sets() {
        let mut sets = ParameterSets::default();
        assert!(sets.complete(annexb(&[IDR])).is_none(), "nothing known yet");
        let sps = sps();
        let format = sets.observe(&annexb(&[&sps, PPS, IDR])).cloned().unwrap();
        assert_eq!(format.codec, "avc1.64000a");
        assert_eq!((format.width, format.height), (64, 64));
        let whole = annexb(&[&sps, PPS, IDR]);
        assert_eq!(
            sets.complete(whole.clone()).unwrap(),
            whole,
            "already complete"
        );
        assert_eq!(sets.complete(annexb(&[IDR])).unwrap(), whole);
        let broken = annexb(&[&[0x67, 0x42]]);
        assert_eq!(
            sets.observe(&broken),
            Some(&format),
            "a broken SPS keeps the last format"
        );
    }
}
