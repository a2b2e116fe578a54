//! The progress line `publish` and `subscribe` keep on stderr while they run (bitrate, frames,
//! groups, age of the newest frame), and their one-line summary at the end. The line is drawn
//! only when stderr is a terminal and `--quiet` was not given.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    verb: &'static str,
    live: bool,
    start: Instant,
    last_draw: Instant,
    window_start: Instant,
    window_bytes: u64,
    pub bytes: u64,
    pub frames: u64,
    pub groups: u64,
    /// Capture time (µs since the epoch) of the newest frame.
    newest_us: Option<u64>,
    pub reconnects: u64,
    kbps: f64,
}

impl Progress {
    pub fn new(verb: &'static str, quiet: bool) -> Self {
        let now = Instant::now();
        Progress {
            verb,
            live: !quiet && std::io::stderr().is_terminal(),
            start: now,
            last_draw: now,
            window_start: now,
            window_bytes: 0,
            bytes: 0,
            frames: 0,
            groups: 0,
            newest_us: None,
            reconnects: 0,
            kbps: 0.0,
        }
    }

    /// Counts a frame of `bytes` captured at `capture_us`, the first of a group if `group`.
    pub fn frame(&mut self, bytes: usize, capture_us: Option<u64>, group: bool) {
        self.bytes += bytes as u64;
        self.window_bytes += bytes as u64;
        self.frames += 1;
        if group {
            self.groups += 1;
        }
        if capture_us.is_some() {
            self.newest_us = capture_us;
        }
        self.draw(false);
    }

    /// Redraws the line if a second has passed (or `now`).
    pub fn draw(&mut self, now: bool) {
        let t = Instant::now();
        let window = t - self.window_start;
        if window >= Duration::from_secs(1) {
            self.kbps = self.window_bytes as f64 * 8.0 / window.as_secs_f64() / 1000.0;
            self.window_start = t;
            self.window_bytes = 0;
        }
        if !self.live || (!now && t - self.last_draw < Duration::from_millis(500)) {
            return;
        }
        self.last_draw = t;
        let age = match self.newest_us {
            Some(us) => format!(
                "{:.0} ms",
                (crate::client::now_micros().saturating_sub(us)) as f64 / 1000.0
            ),
            None => "-".into(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{} {:.0} kbit/s, {} frames, {} groups, newest frame {age} old",
            self.verb, self.kbps, self.frames, self.groups
        );
        let _ = err.flush();
    }

    /// The one-line summary (printed whatever `--quiet` says).
    pub fn finish(&self, how: &str) {
        let secs = self.start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.live {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(
            err,
            "{} {}: {} frames in {} groups, {:.1} MB in {:.1} s ({:.0} kbit/s){}",
            self.verb,
            how,
            self.frames,
            self.groups,
            self.bytes as f64 / 1e6,
            secs,
            if secs > 0.0 {
                self.bytes as f64 * 8.0 / secs / 1000.0
            } else {
                0.0
            },
            match self.reconnects {
                0 => String::new(),
                n => format!(", {n} reconnects"),
            }
        );
    }
}
