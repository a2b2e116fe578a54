//! Fragmented MP4 (CMAF) in: an init segment (`ftyp`, `moov`) then `moof` + `mdat` pairs, as
//! `ffmpeg -f mp4 -movflags cmaf+frag_keyframe+empty_moov+default_base_moof` writes them, read
//! box by box from a byte stream (a pipe, a file) with every box bounded in size. Boxes are
//! decoded by `mp4-atom`; this module only walks them and turns track runs into samples.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use mp4_atom::{Atom, Decode};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::codec::{self, CodecError, Format, Kind};

/// Largest `moov` or `moof` accepted.
const MAX_HEADER_BOX: u64 = 4 << 20;
/// Samples in one fragment, at most.
const MAX_SAMPLES: usize = 100_000;
/// Boxes skipped at most before the init segment (`free`, `styp`, `sidx`, ...).
const MAX_SKIPPED: usize = 64;

/// Why the input cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("input is not an MP4 stream (it starts with {0:02x?})")]
    NotMp4(Vec<u8>),
    #[error("input is empty")]
    Empty,
    #[error("input is an MP4 file that is not fragmented: write it with ffmpeg's `-movflags cmaf+frag_keyframe+empty_moov+default_base_moof` (or remux it: `ffmpeg -i IN -c copy -f mp4 -movflags cmaf+frag_keyframe+empty_moov+default_base_moof OUT`)")]
    Unfragmented,
    #[error("input ended in the middle of a `{kind}` box at byte {at}: truncated stream")]
    Truncated { kind: String, at: u64 },
    #[error("`{kind}` box at byte {at} is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        kind: String,
        at: u64,
        size: u64,
        limit: u64,
    },
    #[error("malformed MP4 at byte {at}: {what}")]
    Malformed { at: u64, what: String },
    #[error("track {track}: {cause}")]
    Codec { track: u32, cause: CodecError },
    #[error("input has no video or audio track")]
    NoTracks,
    #[error("reading input: {0}")]
    Io(#[from] std::io::Error),
}

/// One track of the input.
#[derive(Debug, Clone)]
pub struct Track {
    pub id: u32,
    pub format: Format,
    pub timescale: u32,
    defaults: mp4_atom::Trex,
}

/// One sample (a frame), with its times in the track's timescale.
#[derive(Debug, Clone)]
pub struct Sample {
    pub track: u32,
    pub dts: u64,
    /// Presentation time: `dts` plus the composition offset (may be negative with B-frames).
    pub pts: i64,
    pub duration: u32,
    pub keyframe: bool,
    pub data: Bytes,
}

/// Reads a fragmented MP4 stream.
pub struct Reader<R> {
    input: R,
    /// Bytes read so far.
    pos: u64,
    pub tracks: Vec<Track>,
    /// Tracks whose codec is not supported, with the reason: their samples are skipped.
    pub skipped: Vec<(u32, CodecError)>,
    /// Where each track's next fragment starts when a `moof` has no `tfdt`.
    next_dts: HashMap<u32, u64>,
    max_fragment: u64,
}

/// A box header: its type, where it starts, its header and body sizes.
struct BoxHead {
    kind: [u8; 4],
    at: u64,
    header: Vec<u8>,
    body: u64,
}

impl BoxHead {
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.kind).into_owned()
    }
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads the init segment. Fails on anything that is not fragmented MP4, and when no track
    /// can be published (a supported codec on some tracks is enough: the others are skipped,
    /// see [`Reader::skipped`]). `max_fragment` bounds a `mdat`.
    pub async fn open(input: R, max_fragment: u64) -> Result<Self, Error> {
        let mut r = Reader {
            input,
            pos: 0,
            tracks: vec![],
            skipped: vec![],
            next_dts: HashMap::new(),
            max_fragment,
        };
        let mut first = true;
        let mut skipped = 0;
        loop {
            let head = match r.head().await {
                Ok(Some(h)) => h,
                Ok(None) if first => return Err(Error::Empty),
                Ok(None) => return Err(Error::Unfragmented),
                Err(Error::Truncated { .. }) if first => return Err(Error::NotMp4(vec![])),
                Err(e) => return Err(e),
            };
            if first && !matches!(&head.kind, b"ftyp" | b"styp" | b"free" | b"skip" | b"moov") {
                let mut start = head.header.clone();
                start.truncate(8);
                return Err(Error::NotMp4(start));
            }
            first = false;
            match &head.kind {
                b"moov" => {
                    let moov: mp4_atom::Moov = match r.decode(head, MAX_HEADER_BOX).await {
                        Err(Error::Malformed { at, what }) if what.contains("av1C") => {
                            return Err(Error::Malformed {
                                at,
                                what: "the AV1 track's av1C box is empty or broken (ffmpeg's libaom-av1 and librav1e write an empty one with empty_moov; libsvtav1 writes it)".into(),
                            })
                        }
                        other => other?,
                    };
                    r.tracks_of(moov)?;
                    return Ok(r);
                }
                b"mdat" | b"moof" => return Err(Error::Unfragmented),
                _ => {
                    skipped += 1;
                    if skipped > MAX_SKIPPED {
                        return Err(Error::Malformed {
                            at: r.pos,
                            what: "no moov box".into(),
                        });
                    }
                    r.skip(&head).await?;
                }
            }
        }
    }

    fn tracks_of(&mut self, moov: mp4_atom::Moov) -> Result<(), Error> {
        let Some(mvex) = moov.mvex else {
            return Err(Error::Unfragmented);
        };
        for trak in moov.trak {
            let id = trak.tkhd.track_id;
            let Some(entry) = trak.mdia.minf.stbl.stsd.codecs.first() else {
                continue;
            };
            let format = match codec::from_sample_entry(entry) {
                Ok(f) => f,
                Err(e) => {
                    self.skipped.push((id, e));
                    continue;
                }
            };
            let defaults = mvex
                .trex
                .iter()
                .find(|t| t.track_id == id)
                .cloned()
                .unwrap_or(mp4_atom::Trex {
                    track_id: id,
                    default_sample_description_index: 1,
                    ..Default::default()
                });
            let timescale = trak.mdia.mdhd.timescale.max(1);
            self.tracks.push(Track {
                id,
                format,
                timescale,
                defaults,
            });
        }
        if self.tracks.is_empty() {
            return Err(match self.skipped.first() {
                Some((track, e)) => Error::Codec {
                    track: *track,
                    cause: e.clone(),
                },
                None => Error::NoTracks,
            });
        }
        Ok(())
    }

    /// The first video and the first audio track.
    pub fn track(&self, kind: Kind) -> Option<&Track> {
        self.tracks.iter().find(|t| t.format.kind == kind)
    }

    /// The samples of the next fragment (`moof` + `mdat`), in the order they are stored;
    /// `None` at a clean end of input.
    pub async fn next(&mut self) -> Result<Option<Vec<Sample>>, Error> {
        loop {
            let Some(head) = self.head().await? else {
                return Ok(None);
            };
            match &head.kind {
                b"moof" => {
                    let moof_at = head.at;
                    let moof_size = head.header.len() as u64 + head.body;
                    let moof: mp4_atom::Moof = self.decode(head, MAX_HEADER_BOX).await?;
                    let Some(mdat) = self.head().await? else {
                        return Err(Error::Truncated {
                            kind: "moof".into(),
                            at: moof_at,
                        });
                    };
                    if &mdat.kind != b"mdat" {
                        return Err(Error::Malformed {
                            at: mdat.at,
                            what: format!("`{}` after a moof, not mdat", mdat.name()),
                        });
                    }
                    let data_at = mdat.at + mdat.header.len() as u64;
                    let data = self.body(&mdat, self.max_fragment).await?;
                    return self
                        .samples(&moof, moof_at, moof_size, data_at, data)
                        .map(Some);
                }
                b"moov" => {
                    return Err(Error::Malformed {
                        at: head.at,
                        what: "a second init segment (moov) in the stream".into(),
                    })
                }
                _ => self.skip(&head).await?,
            }
        }
    }

    fn samples(
        &mut self,
        moof: &mp4_atom::Moof,
        moof_at: u64,
        _moof_size: u64,
        data_at: u64,
        data: Bytes,
    ) -> Result<Vec<Sample>, Error> {
        let bad = |what: String| Error::Malformed { at: moof_at, what };
        let mut out = vec![];
        let mut count = 0;
        for traf in &moof.traf {
            let id = traf.tfhd.track_id;
            let Some(track) = self.tracks.iter().find(|t| t.id == id) else {
                continue; // a skipped track
            };
            let base = traf.tfhd.base_data_offset.unwrap_or(moof_at);
            let mut dts = match &traf.tfdt {
                Some(t) => t.base_media_decode_time,
                None => self.next_dts.get(&id).copied().unwrap_or(0),
            };
            let d = &track.defaults;
            let mut next = base;
            for trun in &traf.trun {
                if let Some(off) = trun.data_offset {
                    next = base
                        .checked_add_signed(off.into())
                        .ok_or_else(|| bad("negative data offset".into()))?;
                }
                if count + trun.samples.len() > MAX_SAMPLES {
                    return Err(bad(format!(
                        "more than {MAX_SAMPLES} samples in a fragment"
                    )));
                }
                count += trun.samples.len();
                for e in trun.samples.iter() {
                    let size = e
                        .size
                        .or(traf.tfhd.default_sample_size)
                        .unwrap_or(d.default_sample_size) as u64;
                    let duration = e
                        .duration
                        .or(traf.tfhd.default_sample_duration)
                        .unwrap_or(d.default_sample_duration);
                    let flags = e
                        .flags
                        .or(traf.tfhd.default_sample_flags)
                        .unwrap_or(d.default_sample_flags);
                    let outside = || bad("sample data outside its mdat".into());
                    let start = next.checked_sub(data_at).ok_or_else(outside)?;
                    let end = start.checked_add(size).ok_or_else(outside)?;
                    if end > data.len() as u64 {
                        return Err(bad(format!(
                            "sample of {size} bytes past the end of its mdat ({} bytes)",
                            data.len()
                        )));
                    }
                    let keyframe = track.format.kind == Kind::Audio || flags & 0x0001_0000 == 0;
                    out.push(Sample {
                        track: id,
                        dts,
                        pts: i64::try_from(dts)
                            .ok()
                            .and_then(|d| d.checked_add(e.cts.unwrap_or(0)))
                            .ok_or_else(|| bad("presentation time overflows".into()))?,
                        duration,
                        keyframe,
                        data: data.slice(start as usize..end as usize),
                    });
                    next = end + data_at;
                    dts = dts
                        .checked_add(u64::from(duration))
                        .ok_or_else(|| bad("decode time overflows".into()))?;
                }
            }
            self.next_dts.insert(id, dts);
        }
        Ok(out)
    }

    /// The next box header, `None` at a clean end of input (between boxes).
    async fn head(&mut self) -> Result<Option<BoxHead>, Error> {
        let at = self.pos;
        let mut header = vec![0u8; 8];
        let mut got = 0;
        while got < 8 {
            let n = self.input.read(&mut header[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(Error::Truncated {
                    kind: "box header".into(),
                    at,
                });
            }
            got += n;
        }
        self.pos += 8;
        let size = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        let kind: [u8; 4] = header[4..8].try_into().expect("4 bytes");
        let total = match size {
            0 => {
                return Err(Error::Malformed {
                    at,
                    what: format!(
                        "`{}` box runs to the end of input, which a stream cannot have",
                        String::from_utf8_lossy(&kind)
                    ),
                })
            }
            1 => {
                let mut large = [0u8; 8];
                self.read_exact(&mut large, &kind, at).await?;
                header.extend_from_slice(&large);
                u64::from_be_bytes(large)
            }
            n => u64::from(n),
        };
        let body = total
            .checked_sub(header.len() as u64)
            .ok_or_else(|| Error::Malformed {
                at,
                what: format!("box size {total} is smaller than its header"),
            })?;
        Ok(Some(BoxHead {
            kind,
            at,
            header,
            body,
        }))
    }

    async fn read_exact(&mut self, buf: &mut [u8], kind: &[u8; 4], at: u64) -> Result<(), Error> {
        match self.input.read_exact(buf).await {
            Ok(_) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Truncated {
                kind: String::from_utf8_lossy(kind).into_owned(),
                at,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The body of `head`, at most `limit` bytes.
    async fn body(&mut self, head: &BoxHead, limit: u64) -> Result<Bytes, Error> {
        if head.body > limit {
            return Err(Error::TooLarge {
                kind: head.name(),
                at: head.at,
                size: head.body,
                limit,
            });
        }
        let mut buf = BytesMut::zeroed(head.body as usize);
        self.read_exact(&mut buf, &head.kind, head.at).await?;
        Ok(buf.freeze())
    }

    async fn skip(&mut self, head: &BoxHead) -> Result<(), Error> {
        let n = tokio::io::copy(
            &mut (&mut self.input).take(head.body),
            &mut tokio::io::sink(),
        )
        .await?;
        self.pos += n;
        if n < head.body {
            return Err(Error::Truncated {
                kind: head.name(),
                at: head.at,
            });
        }
        Ok(())
    }

    /// Reads and decodes a whole box.
    async fn decode<T: Atom>(&mut self, head: BoxHead, limit: u64) -> Result<T, Error> {
        let body = self.body(&head, limit).await?;
        let mut whole = head.header.clone();
        whole.extend_from_slice(&body);
        T::decode(&mut whole.as_slice()).map_err(|e| Error::Malformed {
            at: head.at,
            what: format!("`{}` box: {e}", head.name()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::catalog::{SelectionParams, Track as CatalogTrack};
    use crate::media::{codec, mux};
    use mp4_atom::Encode;

    /// An init segment with one Opus track (id 1), then `moof` and an 8-byte `mdat`.
    fn stream(moof: mp4_atom::Moof) -> Vec<u8> {
        let spec = CatalogTrack::new(
            "audio",
            SelectionParams {
                codec: "opus".into(),
                ..Default::default()
            },
            None,
        );
        let entry = codec::to_sample_entry(&spec, None).unwrap();
        let mut out = mux::init_segment(&[mux::Track {
            id: 1,
            kind: Kind::Audio,
            timescale: 48000,
            entry,
        }])
        .unwrap();
        moof.encode(&mut out).unwrap();
        out.extend_from_slice(&[0, 0, 0, 16, b'm', b'd', b'a', b't', 1, 2, 3, 4, 5, 6, 7, 8]);
        out
    }

    fn traf(tfhd: mp4_atom::Tfhd, samples: mp4_atom::TrunSamples) -> mp4_atom::Traf {
        mp4_atom::Traf {
            tfhd,
            trun: vec![mp4_atom::Trun {
                data_offset: None,
                samples,
            }],
            ..Default::default()
        }
    }

    /// Points every run's data at the start of the `mdat` that follows `moof`.
    fn place(mut moof: mp4_atom::Moof) -> mp4_atom::Moof {
        for t in &mut moof.traf {
            t.trun[0].data_offset = Some(0);
        }
        let mut sized = Vec::new();
        moof.encode(&mut sized).unwrap();
        for t in &mut moof.traf {
            t.trun[0].data_offset = Some(sized.len() as i32 + 8);
        }
        moof
    }

    async fn first_fragment(bytes: Vec<u8>) -> Result<Option<Vec<Sample>>, Error> {
        let mut r = Reader::open(std::io::Cursor::new(bytes), 1 << 20).await?;
        r.next().await
    }

    #[tokio::test]
    async fn hostile_fragments_are_errors_not_panics_or_floods() {
        // Many runs of empty samples, each under the per-fragment bound, together over it.
        let run = || {
            traf(
                mp4_atom::Tfhd {
                    track_id: 1,
                    default_sample_size: Some(0),
                    ..Default::default()
                },
                mp4_atom::TrunSamples::Inherited {
                    count: 60_000,
                    first_flags: None,
                },
            )
        };
        let flood = place(mp4_atom::Moof {
            traf: vec![run(), run()],
            ..Default::default()
        });
        let e = first_fragment(stream(flood)).await.unwrap_err();
        assert!(e.to_string().contains("samples in a fragment"), "{e}");

        // A data offset at the end of the address space, and a sample that runs past it.
        let far = mp4_atom::Moof {
            traf: vec![traf(
                mp4_atom::Tfhd {
                    track_id: 1,
                    base_data_offset: Some(u64::MAX - 2),
                    default_sample_size: Some(u32::MAX),
                    ..Default::default()
                },
                mp4_atom::TrunSamples::Inherited {
                    count: 1,
                    first_flags: None,
                },
            )],
            ..Default::default()
        };
        let e = first_fragment(stream(far)).await.unwrap_err();
        assert!(e.to_string().contains("outside its mdat"), "{e}");

        // A sample larger than its mdat (whose data starts right after the moof).
        let big = mp4_atom::Moof {
            traf: vec![traf(
                mp4_atom::Tfhd {
                    track_id: 1,
                    default_base_is_moof: true,
                    default_sample_size: Some(1000),
                    ..Default::default()
                },
                mp4_atom::TrunSamples::Inherited {
                    count: 1,
                    first_flags: None,
                },
            )],
            ..Default::default()
        };
        let e = first_fragment(stream(place(big))).await.unwrap_err();
        assert!(e.to_string().contains("past the end of its mdat"), "{e}");
    }
}
