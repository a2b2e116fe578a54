//! What one direction of an impaired path does to packets, and the seeded decisions it takes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Impairments of one direction. Parsed from `delay=20ms,jitter=5ms,loss=5%,burst=2,dup=1%,
/// rate=50mbit,queue=256kb` (every key optional; `none` or an empty string is a clean path).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Each packet's delay varies uniformly by up to this much either way, so packets reorder.
    pub jitter: Duration,
    /// Fraction of packets lost, 0..1.
    pub loss: f64,
    /// Mean length of a loss burst in packets (1 = independent losses). Gilbert-Elliott: the
    /// path enters a bad state that drops everything and leaves it after `burst` packets on
    /// average, with the entry rate chosen so the long-run loss is `loss`.
    pub burst: f64,
    /// Fraction of packets delivered twice.
    pub duplicate: f64,
    /// Bottleneck rate in bit/s (0 = unlimited).
    pub rate_bps: u64,
    /// Bytes the bottleneck queues before it drops arriving packets (tail drop).
    pub queue_bytes: usize,
}

impl Impairment {
    /// Default bottleneck queue when a rate is set without one.
    pub const DEFAULT_QUEUE: usize = 256 * 1024;

    /// True when the direction passes packets untouched.
    pub fn is_clean(&self) -> bool {
        *self == Self::default()
    }
}

/// Why an impairment spec did not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// A part that is not `key=value`.
    #[error("expected key=value, got {0:?}")]
    NotAPair(String),
    /// A key this proxy does not know.
    #[error("unknown key {0:?} (delay, jitter, loss, burst, dup, rate, queue)")]
    UnknownKey(String),
    /// A value that does not parse for its key.
    #[error("bad value for {key}: {value:?}")]
    BadValue { key: String, value: String },
}

fn percent(key: &str, v: &str) -> Result<f64, SpecError> {
    let bad = || SpecError::BadValue {
        key: key.into(),
        value: v.into(),
    };
    let n: f64 = v
        .strip_suffix('%')
        .unwrap_or(v)
        .parse()
        .map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&n) {
        return Err(bad());
    }
    Ok(n / 100.0)
}

fn scaled(key: &str, v: &str, units: &[(&str, u64)]) -> Result<u64, SpecError> {
    let bad = || SpecError::BadValue {
        key: key.into(),
        value: v.into(),
    };
    let lower = v.to_ascii_lowercase();
    let (num, mult) = units
        .iter()
        .find_map(|(suffix, m)| lower.strip_suffix(suffix).map(|n| (n.to_owned(), *m)))
        .unwrap_or((lower.clone(), 1));
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    Ok((n * mult as f64) as u64)
}

impl FromStr for Impairment {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut out = Impairment::default();
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(out);
        }
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| SpecError::NotAPair(part.into()))?;
            let (k, v) = (k.trim(), v.trim());
            let bad = || SpecError::BadValue {
                key: k.into(),
                value: v.into(),
            };
            match k {
                "delay" => out.delay = humantime::parse_duration(v).map_err(|_| bad())?,
                "jitter" => out.jitter = humantime::parse_duration(v).map_err(|_| bad())?,
                "loss" => out.loss = percent(k, v)?,
                "dup" => out.duplicate = percent(k, v)?,
                "burst" => {
                    out.burst = v.parse().map_err(|_| bad())?;
                    if !(out.burst >= 1.0 && out.burst.is_finite()) {
                        return Err(bad());
                    }
                }
                "rate" => {
                    out.rate_bps = scaled(
                        k,
                        v,
                        &[
                            ("gbit", 1 << 30),
                            ("mbit", 1_000_000),
                            ("kbit", 1000),
                            ("bit", 1),
                        ],
                    )?
                }
                "queue" => {
                    out.queue_bytes =
                        scaled(k, v, &[("mb", 1 << 20), ("kb", 1 << 10), ("b", 1)])? as usize
                }
                other => return Err(SpecError::UnknownKey(other.into())),
            }
        }
        if out.rate_bps > 0 && out.queue_bytes == 0 {
            out.queue_bytes = Self::DEFAULT_QUEUE;
        }
        Ok(out)
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return f.write_str("none");
        }
        write!(
            f,
            "delay={:?},jitter={:?},loss={}%,burst={},dup={}%,rate={}bit,queue={}b",
            self.delay,
            self.jitter,
            self.loss * 100.0,
            self.burst.max(1.0),
            self.duplicate * 100.0,
            self.rate_bps,
            self.queue_bytes
        )
    }
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Lost on the path.
    Lost,
    /// Dropped because the bottleneck queue was full.
    QueueFull,
    /// Delivered after this delay (counted from arrival), and again after `dup` if set.
    Deliver {
        after: Duration,
        dup: Option<Duration>,
    },
}

/// One direction's state: its seeded random source, loss state and bottleneck backlog. No
/// clock of its own: callers pass the time.
#[derive(Debug)]
pub struct Path {
    spec: Impairment,
    rng: StdRng,
    bad: bool,
    /// When the bottleneck finishes sending what it holds, in nanoseconds of the caller's clock.
    busy_until: u128,
}

impl Path {
    /// A path whose decisions replay exactly for the same `seed` and packet sequence.
    pub fn new(spec: Impairment, seed: u64) -> Path {
        Path {
            spec,
            rng: StdRng::seed_from_u64(seed),
            bad: false,
            busy_until: 0,
        }
    }

    fn lost(&mut self) -> bool {
        let loss = self.spec.loss;
        if loss <= 0.0 {
            return false;
        }
        if self.spec.burst <= 1.0 {
            return self.rng.random_bool(loss.min(1.0));
        }
        // Gilbert-Elliott with a lossless good state and a lossy bad state.
        let leave = 1.0 / self.spec.burst;
        let enter = (loss * leave / (1.0 - loss).max(1e-9)).min(1.0);
        self.bad = if self.bad {
            !self.rng.random_bool(leave)
        } else {
            self.rng.random_bool(enter)
        };
        self.bad
    }

    fn jittered(&mut self) -> Duration {
        let j = self.spec.jitter.as_nanos() as i128;
        let d = self.spec.delay.as_nanos() as i128;
        let offset = if j > 0 {
            self.rng.random_range(-j..=j)
        } else {
            0
        };
        Duration::from_nanos((d + offset).max(0) as u64)
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now_ns`.
    pub fn decide(&mut self, now_ns: u128, len: usize) -> Fate {
        // Draw every random number for every packet, so one setting does not shift the others.
        let lost = self.lost();
        let dup = self.spec.duplicate > 0.0 && self.rng.random_bool(self.spec.duplicate.min(1.0));
        let first = self.jittered();
        let second = self.jittered();
        if lost {
            return Fate::Lost;
        }
        let mut queued = Duration::ZERO;
        if self.spec.rate_bps > 0 {
            let start = self.busy_until.max(now_ns);
            let backlog_ns = start - now_ns;
            let backlog_bytes = backlog_ns * self.spec.rate_bps as u128 / 8 / 1_000_000_000;
            if backlog_bytes + len as u128 > self.spec.queue_bytes as u128 {
                return Fate::QueueFull;
            }
            let tx_ns = len as u128 * 8 * 1_000_000_000 / self.spec.rate_bps as u128;
            self.busy_until = start + tx_ns;
            queued = Duration::from_nanos((self.busy_until - now_ns) as u64);
        }
        Fate::Deliver {
            after: queued + first,
            dup: dup.then_some(queued + second),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse_nonsense() {
        let s: Impairment = "delay=20ms, jitter=5ms,loss=5%,burst=3,dup=1,rate=50mbit"
            .parse()
            .unwrap();
        assert_eq!(s.delay, Duration::from_millis(20));
        assert_eq!(s.jitter, Duration::from_millis(5));
        assert!((s.loss - 0.05).abs() < 1e-12);
        assert!((s.duplicate - 0.01).abs() < 1e-12);
        assert_eq!(s.rate_bps, 50_000_000);
        assert_eq!(s.queue_bytes, Impairment::DEFAULT_QUEUE);
        assert!("none".parse::<Impairment>().unwrap().is_clean());
        assert!(matches!(
            "loss=101%".parse::<Impairment>(),
            Err(SpecError::BadValue { .. })
        ));
        assert!(matches!(
            "lag=1".parse::<Impairment>(),
            Err(SpecError::UnknownKey(_))
        ));
        assert!(matches!(
            "delay".parse::<Impairment>(),
            Err(SpecError::NotAPair(_))
        ));
        assert!(matches!(
            "burst=0.5".parse::<Impairment>(),
            Err(SpecError::BadValue { .. })
        ));
    }

    fn run(spec: &str, seed: u64, n: usize) -> Vec<Fate> {
        let mut p = Path::new(spec.parse().unwrap(), seed);
        (0..n)
            .map(|i| p.decide(i as u128 * 1_000_000, 1200))
            .collect()
    }

    #[test]
    fn same_seed_same_fates_and_loss_rates_hold() {
        assert_eq!(
            run("loss=5%,jitter=5ms,delay=20ms", 7, 1000),
            run("loss=5%,jitter=5ms,delay=20ms", 7, 1000)
        );
        assert_ne!(run("loss=5%", 7, 1000), run("loss=5%", 8, 1000));
        for spec in ["loss=10%", "loss=10%,burst=4"] {
            let fates = run(spec, 1, 100_000);
            let lost = fates.iter().filter(|f| **f == Fate::Lost).count() as f64 / 1e5;
            assert!((lost - 0.10).abs() < 0.01, "{spec}: {lost}");
        }
        // Bursty loss comes in runs: consecutive losses are far more common than at random.
        let runs = |spec| {
            let f = run(spec, 3, 100_000);
            f.windows(2)
                .filter(|w| w[0] == Fate::Lost && w[1] == Fate::Lost)
                .count()
        };
        assert!(runs("loss=10%,burst=4") > 3 * runs("loss=10%"));
    }

    #[test]
    fn jitter_reorders_and_the_bottleneck_queues_then_drops() {
        let fates = run("delay=20ms,jitter=5ms", 1, 200);
        let arrivals: Vec<u128> = fates
            .iter()
            .enumerate()
            .map(|(i, f)| match f {
                Fate::Deliver { after, .. } => i as u128 * 1_000_000 + after.as_nanos(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            arrivals.windows(2).any(|w| w[1] < w[0]),
            "no packet overtook another"
        );
        // 1 Mbit/s with a 3 kB queue: 1200-byte packets every 1 ms arrive faster than they
        // leave (9.6 ms each), so the queue fills and further arrivals are dropped.
        let mut p = Path::new("rate=1mbit,queue=3kb".parse().unwrap(), 1);
        let fates: Vec<Fate> = (0..10).map(|i| p.decide(i * 1_000_000, 1200)).collect();
        assert!(
            matches!(fates[0], Fate::Deliver { after, .. } if after == Duration::from_micros(9600))
        );
        assert!(fates.contains(&Fate::QueueFull));
    }
}
