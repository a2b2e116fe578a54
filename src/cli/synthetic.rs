//! Synthetic media: video frames at a frame rate with one group per GOP, audio packets every
//! 20 ms with one group per second. Payloads are self-verifying (see `client::synthetic_payload`).

use std::time::Duration;

use clap::Args;
use moq_transport::serve::{Subgroup, SubgroupWriter, SubgroupsWriter};

use crate::client::synthetic_payload;

/// Shape of the synthetic stream.
#[derive(Args, Debug, Clone)]
pub struct Profile {
    /// Video bitrate in kbit/s (0 disables video).
    #[arg(long, default_value_t = 2500)]
    pub video_kbps: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u64,
    /// Seconds per group of pictures (one MoQ group).
    #[arg(long, default_value_t = 2.0)]
    pub gop_secs: f64,
    /// Audio bitrate in kbit/s (0 disables audio).
    #[arg(long, default_value_t = 64)]
    pub audio_kbps: u64,
}

impl Profile {
    /// Track names this profile publishes.
    pub fn tracks(&self) -> Vec<&'static str> {
        let mut t = vec![];
        if self.video_kbps > 0 {
            t.push("video");
        }
        if self.audio_kbps > 0 {
            t.push("audio");
        }
        t
    }
}

struct Stream {
    writer: SubgroupsWriter,
    group: Option<SubgroupWriter>,
    group_id: u64,
    object: u64,
    per_group: u64,
    size: usize,
    period: Duration,
    priority: u8,
    next_due: tokio::time::Instant,
}

impl Stream {
    fn emit(&mut self) -> anyhow::Result<u64> {
        if self.group.is_none() || self.object == self.per_group {
            if self.group.take().is_some() {
                self.group_id += 1;
            }
            self.object = 0;
            self.group = Some(self.writer.create(Subgroup {
                group_id: self.group_id,
                subgroup_id: 0,
                priority: self.priority,
            })?);
        }
        let g = self.group.as_mut().expect("group opened above");
        g.write(synthetic_payload(self.group_id, self.object, self.size))?;
        self.object += 1;
        self.next_due += self.period;
        Ok(self.size as u64)
    }
}

/// Publishes until `duration` passes (or forever). Returns the objects written and the track
/// writers, so the caller decides when the tracks end.
pub async fn run(
    profile: &Profile,
    writers: Vec<SubgroupsWriter>,
    duration: Option<Duration>,
) -> anyhow::Result<(u64, Vec<SubgroupsWriter>)> {
    let start = tokio::time::Instant::now();
    let mut streams = vec![];
    for (name, writer) in profile.tracks().into_iter().zip(writers) {
        let (fps, kbps, per_group, priority) = match name {
            "video" => (
                profile.fps.max(1),
                profile.video_kbps,
                ((profile.fps as f64) * profile.gop_secs).max(1.0) as u64,
                2,
            ),
            _ => (50, profile.audio_kbps, 50, 1),
        };
        streams.push(Stream {
            writer,
            group: None,
            group_id: 0,
            object: 0,
            per_group,
            size: ((kbps * 1000 / 8) / fps) as usize,
            period: Duration::from_micros(1_000_000 / fps),
            priority,
            next_due: start,
        });
    }
    let mut objects = 0;
    loop {
        let Some(next) = streams.iter_mut().min_by_key(|s| s.next_due) else {
            return Ok((0, vec![]));
        };
        if duration.is_some_and(|d| next.next_due >= start + d) {
            return Ok((objects, streams.into_iter().map(|s| s.writer).collect()));
        }
        tokio::time::sleep_until(next.next_due).await;
        next.emit()?;
        objects += 1;
    }
}
