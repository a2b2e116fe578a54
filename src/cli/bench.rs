//! `roomcast bench`: P publishers of synthetic video+audio, S subscribers each, over real QUIC.
//!
//! Speaks plain draft-18, so `--relay` can point at any draft-18 relay. Without `--relay` it
//! starts this binary's relay as a child process. Relay CPU and RSS come from /proc when the
//! relay's pid is known (always for the child; `--relay-pid` otherwise).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::synthetic::{self, Profile};
use crate::auth::{Claims, Grant, TokenIssuer};
use crate::client::{self, now_micros, verify_payload, Client, Received, Target};
use crate::impair::{self, Impairment, Proxy};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Relay to measure (`moqt://host:port/` or `https://host:port/`); default: start one.
    #[arg(long, requires = "cert_sha256")]
    pub relay: Option<url::Url>,
    /// Certificate hash of `--relay`.
    #[arg(long)]
    pub cert_sha256: Option<String>,
    /// Token for every client of `--relay` (other relays); default: mint per client.
    #[arg(long, hide_env_values = true, env = "ROOMCAST_BENCH_TOKEN")]
    pub token: Option<String>,
    /// Token secret of `--relay`, to mint per-client tokens for a roomcast relay.
    #[arg(long, hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Pid of `--relay`, for CPU and RSS figures.
    #[arg(long)]
    pub relay_pid: Option<u32>,
    /// Number of publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers per publisher.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Impairments on every subscriber's path (both directions), through the in-process UDP
    /// proxy, e.g. `delay=20ms,jitter=5ms,loss=5%`; publishers connect directly.
    #[arg(long, default_value = "none")]
    pub path: Impairment,
    /// Seed of the path's random decisions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Relay nodes to start (a cluster when above 1: needs `--redis-url` and
    /// `--database-url`); the publishers connect to the first, subscribers are spread over all.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Redis of the cluster the started nodes form (`--nodes` above 1).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// PostgreSQL of the cluster the started nodes form (`--nodes` above 1).
    #[arg(long, hide_env_values = true, env = "ROOMCAST_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub profile: Profile,
}

#[derive(Default)]
struct Counters {
    objects: AtomicU64,
    bytes: AtomicU64,
    corrupted: AtomicU64,
    /// Subscriptions that received at least one object.
    served: AtomicU64,
}

/// The subscribers' way to the relay: through the impairment proxy when a path is set.
async fn subscriber_target(
    target: &Target,
    args: &BenchArgs,
) -> anyhow::Result<(Target, Option<Proxy>)> {
    if args.path.is_clean() {
        return Ok((target.clone(), None));
    }
    let host = target.url.host_str().context("relay url has no host")?;
    let port = target.url.port().context("relay url has no port")?;
    let upstream = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .context("cannot resolve relay")?;
    let proxy = Proxy::start(
        "127.0.0.1:0".parse()?,
        upstream,
        impair::Config {
            seed: args.seed,
            up: args.path.clone(),
            down: args.path.clone(),
        },
    )
    .await?;
    let mut url = target.url.clone();
    url.set_port(Some(proxy.addr.port()))
        .map_err(|()| anyhow::anyhow!("cannot set proxy port"))?;
    let _ = url.set_host(Some("127.0.0.1"));
    Ok((
        Target {
            url,
            cert_sha256: target.cert_sha256.clone(),
        },
        Some(proxy),
    ))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut children = vec![];
    // Every node's target (the first takes the publishers) and every relay process's pid.
    let (targets, secret, pids) = match &args.relay {
        Some(url) => (
            vec![Target {
                url: url.clone(),
                cert_sha256: args.cert_sha256.clone().context("--cert-sha256")?,
            }],
            args.token_secret.clone(),
            args.relay_pid.into_iter().collect::<Vec<_>>(),
        ),
        None => {
            let secret = uuid::Uuid::new_v4().simple().to_string()
                + &uuid::Uuid::new_v4().simple().to_string();
            let cluster = cluster_flags(&args)?;
            let (mut targets, mut pids) = (vec![], vec![]);
            for n in 0..args.nodes.max(1) {
                let flags: Vec<String> = match &cluster {
                    Some(flags) => flags
                        .iter()
                        .cloned()
                        .chain(["--node-id".into(), format!("n{n}")])
                        .collect(),
                    None => vec![],
                };
                let (c, target) = spawn_relay(&secret, &flags).await?;
                pids.extend(c.id());
                children.push(c);
                targets.push(target);
            }
            (targets, Some(secret), pids)
        }
    };
    let target = targets[0].clone();
    let issuer = secret.as_deref().map(|s| TokenIssuer::new(s.as_bytes()));
    let token = |who: &str, grants: &[Grant]| -> anyhow::Result<Option<String>> {
        if let Some(t) = &args.token {
            return Ok(Some(t.clone()));
        }
        match &issuer {
            Some(i) => Ok(Some(i.mint(&Claims::new(
                who,
                "bench",
                grants.iter().copied().collect(),
                args.duration + Duration::from_secs(600),
            ))?)),
            None => Ok(None),
        }
    };
    let rss_of = |pids: &[u32]| pids.iter().map(|p| rss_kib(*p)).sum::<Option<u64>>();
    let cpu_of = |pids: &[u32]| pids.iter().map(|p| cpu_ticks(*p)).sum::<Option<u64>>();
    let (pids, pid) = (pids.clone(), (!pids.is_empty()).then_some(()));
    let rss_idle = pid.and_then(|()| rss_of(&pids));

    let tracks = args.profile.tracks();
    let counters = Arc::new(Counters::default());
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<u64>();
    let mut publishers = vec![];
    let mut viewers: Vec<Client> = vec![];
    for p in 0..args.publishers {
        let who = format!("pub{p}");
        let c = client::connect(
            &target,
            token(&who, &[Grant::Publish, Grant::Subscribe])?.as_deref(),
        )
        .await?;
        let (writers, announce) =
            client::publish(&c, client::namespace(&["room", "bench", &who])?, &tracks)?;
        publishers.push((c, writers, announce));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Subscribers spread over the nodes (through the proxy only with one node).
    let (via, proxy) = subscriber_target(&target, &args).await?;
    for p in 0..args.publishers {
        for s in 0..args.subscribers {
            let node = match targets.len() {
                1 => &via,
                n => &targets[s % n],
            };
            let c = client::connect(
                node,
                token(&format!("sub{p}x{s}"), &[Grant::Subscribe])?.as_deref(),
            )
            .await?;
            for t in &tracks {
                let ns = client::namespace(&["room", "bench", &format!("pub{p}")])?;
                let (sub, reader) = client::subscribe(&c, ns, t).await?;
                let (tx, mut rx) = mpsc::unbounded_channel::<Received>();
                let counters = counters.clone();
                let lat = lat_tx.clone();
                tokio::spawn(async move {
                    let _keep = sub;
                    tokio::spawn(client::read_track(reader, tx));
                    let mut first = true;
                    while let Some(r) = rx.recv().await {
                        if std::mem::take(&mut first) {
                            counters.served.fetch_add(1, Ordering::Relaxed);
                        }
                        match verify_payload(r.group, r.object, &r.payload) {
                            Some(sent) => {
                                let _ = lat.send(now_micros().saturating_sub(sent));
                            }
                            None => {
                                counters.corrupted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        counters.objects.fetch_add(1, Ordering::Relaxed);
                        counters
                            .bytes
                            .fetch_add(r.payload.len() as u64, Ordering::Relaxed);
                    }
                });
            }
            viewers.push(c);
        }
    }
    drop(lat_tx);
    eprintln!(
        "bench: {} publisher(s) x {} subscriber(s) over {} node(s), {:?} of {:?}",
        args.publishers,
        args.subscribers,
        targets.len(),
        args.duration,
        tracks
    );

    let cpu_start = pid.and_then(|()| cpu_of(&pids));
    let start = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    for (_c, writers, _a) in publishers.iter_mut() {
        let profile = args.profile.clone();
        let writers = std::mem::take(writers);
        let duration = args.duration;
        runs.spawn(async move { synthetic::run(&profile, writers, Some(duration)).await });
    }
    let mut published = 0u64;
    // Tracks stay open until everything is counted: the end of a track is not measured.
    let mut open_tracks = vec![];
    while let Some(r) = runs.join_next().await {
        let (objects, writers) = r??;
        published += objects;
        open_tracks.push(writers);
    }
    let rss_loaded = pid.and_then(|()| rss_of(&pids));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let elapsed = start.elapsed();
    let cpu_secs = match (cpu_start, pid.and_then(|()| cpu_of(&pids))) {
        (Some(a), Some(b)) => Some((b - a) as f64 / clock_ticks()),
        _ => None,
    };

    let mut latencies = vec![];
    while let Ok(l) = lat_rx.try_recv() {
        latencies.push(l);
    }
    latencies.sort_unstable();
    let received = counters.objects.load(Ordering::Relaxed);
    let bytes = counters.bytes.load(Ordering::Relaxed);
    let expected = published * args.subscribers as u64;
    let gbit = bytes as f64 * 8.0 / 1e9;
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    println!("nodes                 {}", targets.len());
    println!("publishers            {}", args.publishers);
    println!(
        "subscribers           {}",
        args.publishers * args.subscribers
    );
    println!(
        "delivered_mbps        {:.1}",
        bytes as f64 * 8.0 / 1e6 / args.duration.as_secs_f64()
    );
    println!(
        "subscriptions_served  {}/{}",
        counters.served.load(Ordering::Relaxed),
        args.publishers * args.subscribers * tracks.len()
    );
    println!("path                  {}", args.path);
    println!("objects_expected      {expected}");
    println!("objects_received      {received}");
    println!(
        "objects_lost          {}",
        expected.saturating_sub(received)
    );
    println!(
        "objects_corrupted     {}",
        counters.corrupted.load(Ordering::Relaxed)
    );
    println!("latency_p50_ms        {:.2}", pct(0.50));
    println!("latency_p99_ms        {:.2}", pct(0.99));
    match cpu_secs {
        Some(c) if gbit > 0.0 => println!("relay_cpu_s_per_gbit  {:.2}", c / gbit),
        _ => println!("relay_cpu_s_per_gbit  n/a"),
    }
    match (rss_idle, rss_loaded) {
        (Some(a), Some(b)) => println!(
            "relay_rss_kib_per_sub {:.1}  (idle {a} KiB, loaded {b} KiB)",
            (b.saturating_sub(a)) as f64 / (args.publishers * args.subscribers).max(1) as f64
        ),
        _ => println!("relay_rss_kib_per_sub n/a"),
    }
    eprintln!("bench: measured over {elapsed:?}");
    if let Some(proxy) = proxy {
        eprint!("bench: proxy {}", proxy.stop().await);
    }
    drop(viewers);
    drop(open_tracks);
    drop(publishers);
    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    Ok(())
}

/// The flags every node of a bench cluster gets (`--nodes` above 1), or none for one node.
fn cluster_flags(args: &BenchArgs) -> anyhow::Result<Option<Vec<String>>> {
    if args.nodes <= 1 {
        return Ok(None);
    }
    let redis = args
        .redis_url
        .clone()
        .context("--nodes above 1 needs --redis-url")?;
    let db = args
        .database_url
        .clone()
        .context("--nodes above 1 needs --database-url")?;
    let cluster_secret =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    Ok(Some(vec![
        "--redis-url".into(),
        redis,
        "--database-url".into(),
        db,
        "--cluster-secret".into(),
        cluster_secret,
    ]))
}

async fn spawn_relay(
    secret: &str,
    extra: &[String],
) -> anyhow::Result<(tokio::process::Child, Target)> {
    let dir = std::env::temp_dir().join(format!("roomcast-bench-{}", uuid::Uuid::new_v4()));
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--webtransport-listen",
            "127.0.0.1:0",
            "--quic-listen",
            "127.0.0.1:0",
            "--whip-listen",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", "127.0.0.1:0", "--token-secret", secret])
        .args(extra)
        // Every simulated client comes from this one address.
        .args(["--max-sessions-per-address", "100000"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--cert-dir")
        .arg(dir.join("certs"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await??
        .context("relay exited")?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
            .context("malformed ready line")
    };
    let target = Target {
        url: field("quic")?.parse()?,
        cert_sha256: field("cert_sha256")?,
    };
    Ok((child, target))
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks() -> f64 {
    100.0
}

/// Resident memory of process `pid` in KiB, from /proc (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
