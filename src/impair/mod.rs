//! A seeded UDP impairment proxy: the path of an ordinary (or bad) internet link on loopback,
//! where the kernel has no netem.
//!
//! One listening socket; each client address gets its own upstream socket, so the upstream
//! server sees one peer per client. Each direction of each client has its own [`Path`]
//! (loss, bursty loss, delay with jitter, duplication, a rate limit with a bounded queue),
//! seeded from the proxy seed and the client's order of arrival, so a failing run replays.
//! Used by the tests, `roomcast bench --via` and `roomcast impair`.

pub mod spec;

use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use spec::{Fate, Impairment, Path, SpecError};

/// Clients one proxy serves at once; more are ignored (counted).
pub const MAX_FLOWS: usize = 1024;
/// Packets in flight inside the proxy; beyond it arriving packets are dropped (counted).
pub const MAX_IN_FLIGHT: usize = 65_536;
/// A client silent this long is forgotten and its upstream socket closed.
pub const FLOW_IDLE: Duration = Duration::from_secs(60);

/// The whole proxy's settings.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub seed: u64,
    /// Client to upstream.
    pub up: Impairment,
    /// Upstream to client.
    pub down: Impairment,
}

/// Counts for one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub queue_drops: u64,
    pub duplicated: u64,
    pub delivered: u64,
    /// Delivered before a packet that arrived at the proxy earlier.
    pub reordered: u64,
    /// Dropped because the proxy itself was full (flows or packets in flight).
    pub overflow: u64,
}

/// What the proxy did, returned when it stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub flows: u64,
    pub up: DirStats,
    pub down: DirStats,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "flows {}", self.flows)?;
        for (name, d) in [("up", &self.up), ("down", &self.down)] {
            writeln!(
                f,
                "{name:<4} packets {} bytes {} lost {} queue_drops {} duplicated {} delivered {} reordered {} overflow {}",
                d.packets, d.bytes, d.lost, d.queue_drops, d.duplicated, d.delivered, d.reordered, d.overflow
            )?;
        }
        Ok(())
    }
}

/// A running proxy. Dropping it without [`Proxy::stop`] also stops it.
pub struct Proxy {
    /// Where clients send to.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Stats>,
}

impl Proxy {
    /// Binds `listen` and forwards to `upstream` through the impairments of `config`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        config: Config,
    ) -> std::io::Result<Proxy> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let addr = socket.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(socket, upstream, config, shutdown.clone()));
        Ok(Proxy {
            addr,
            shutdown,
            task,
        })
    }

    /// Stops forwarding and returns the counts.
    pub async fn stop(self) -> Stats {
        self.shutdown.cancel();
        let task = &mut { self }.task;
        task.await.unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Flow {
    client: SocketAddr,
    socket: Arc<UdpSocket>,
    up: Path,
    down: Path,
    /// Arrival sequence of the newest packet delivered, per direction, to count reordering.
    up_last: u64,
    down_last: u64,
    seen: Instant,
    reader: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

struct Pending {
    at: Instant,
    seq: u64,
    flow: u64,
    dir: Dir,
    data: Bytes,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    // Earliest first in a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Seed of one direction of one flow: the proxy seed mixed with the flow's order and direction.
fn flow_seed(seed: u64, flow: u64, dir: u64) -> u64 {
    let mut x =
        seed ^ flow.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ dir.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^ (x >> 33)
}

struct State {
    config: Config,
    upstream: SocketAddr,
    epoch: Instant,
    flows: HashMap<u64, Flow>,
    by_client: HashMap<SocketAddr, u64>,
    next_flow: u64,
    queue: BinaryHeap<Pending>,
    seq: u64,
    stats: Stats,
    from_upstream: mpsc::Sender<(u64, Bytes)>,
}

impl State {
    fn dir_stats(&mut self, dir: Dir) -> &mut DirStats {
        match dir {
            Dir::Up => &mut self.stats.up,
            Dir::Down => &mut self.stats.down,
        }
    }

    /// Applies the path of `dir` to a packet and queues what survives.
    fn admit(&mut self, flow_id: u64, dir: Dir, data: Bytes) {
        let now = Instant::now();
        let len = data.len();
        {
            let s = self.dir_stats(dir);
            s.packets += 1;
            s.bytes += len as u64;
        }
        if self.queue.len() >= MAX_IN_FLIGHT {
            self.dir_stats(dir).overflow += 1;
            return;
        }
        let now_ns = now.duration_since(self.epoch).as_nanos();
        let Some(flow) = self.flows.get_mut(&flow_id) else {
            return;
        };
        flow.seen = now;
        let path = match dir {
            Dir::Up => &mut flow.up,
            Dir::Down => &mut flow.down,
        };
        match path.decide(now_ns, len) {
            Fate::Lost => self.dir_stats(dir).lost += 1,
            Fate::QueueFull => self.dir_stats(dir).queue_drops += 1,
            Fate::Deliver { after, dup } => {
                self.seq += 1;
                let seq = self.seq;
                self.queue.push(Pending {
                    at: now + after,
                    seq,
                    flow: flow_id,
                    dir,
                    data: data.clone(),
                });
                if let Some(again) = dup {
                    self.dir_stats(dir).duplicated += 1;
                    self.queue.push(Pending {
                        at: now + again,
                        seq,
                        flow: flow_id,
                        dir,
                        data,
                    });
                }
            }
        }
    }

    async fn client_packet(&mut self, from: SocketAddr, data: Bytes) -> std::io::Result<()> {
        let id = match self.by_client.get(&from) {
            Some(id) => *id,
            None => {
                if self.flows.len() >= MAX_FLOWS {
                    self.stats.up.overflow += 1;
                    return Ok(());
                }
                let bind: SocketAddr = if self.upstream.is_ipv4() {
                    "127.0.0.1:0".parse().expect("static")
                } else {
                    "[::1]:0".parse().expect("static")
                };
                let socket = Arc::new(UdpSocket::bind(bind).await?);
                socket.connect(self.upstream).await?;
                let id = self.next_flow;
                self.next_flow += 1;
                self.stats.flows += 1;
                let reader = tokio::spawn(read_upstream(
                    id,
                    socket.clone(),
                    self.from_upstream.clone(),
                ));
                let seed = self.config.seed;
                self.flows.insert(
                    id,
                    Flow {
                        client: from,
                        socket,
                        up: Path::new(self.config.up.clone(), flow_seed(seed, id, 0)),
                        down: Path::new(self.config.down.clone(), flow_seed(seed, id, 1)),
                        up_last: 0,
                        down_last: 0,
                        seen: Instant::now(),
                        reader,
                    },
                );
                self.by_client.insert(from, id);
                id
            }
        };
        self.admit(id, Dir::Up, data);
        Ok(())
    }

    async fn deliver(&mut self, listen: &UdpSocket, p: Pending) {
        let Some(flow) = self.flows.get_mut(&p.flow) else {
            return;
        };
        let last = match p.dir {
            Dir::Up => &mut flow.up_last,
            Dir::Down => &mut flow.down_last,
        };
        let reordered = p.seq < *last;
        *last = (*last).max(p.seq);
        let sent = match p.dir {
            Dir::Up => flow.socket.send(&p.data).await,
            Dir::Down => listen.send_to(&p.data, flow.client).await,
        };
        let s = self.dir_stats(p.dir);
        s.reordered += u64::from(reordered);
        if sent.is_ok() {
            s.delivered += 1;
        }
    }

    fn forget_idle(&mut self) {
        let now = Instant::now();
        let idle: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.seen) > FLOW_IDLE)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if let Some(f) = self.flows.remove(&id) {
                f.reader.abort();
                self.by_client.remove(&f.client);
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

async fn read_upstream(flow: u64, socket: Arc<UdpSocket>, out: mpsc::Sender<(u64, Bytes)>) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = socket.recv(&mut buf).await {
        // A full channel drops the packet, as a full router queue would.
        if let Err(mpsc::error::TrySendError::Closed(_)) =
            out.try_send((flow, Bytes::copy_from_slice(&buf[..n])))
        {
            return;
        }
    }
}

async fn run(
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    config: Config,
    shutdown: CancellationToken,
) -> Stats {
    let (tx, mut rx) = mpsc::channel(8192);
    let mut state = State {
        config,
        upstream,
        epoch: Instant::now(),
        flows: HashMap::new(),
        by_client: HashMap::new(),
        next_flow: 0,
        queue: BinaryHeap::new(),
        seq: 0,
        stats: Stats::default(),
        from_upstream: tx,
    };
    let mut buf = vec![0u8; 65_536];
    let mut sweep = tokio::time::interval(FLOW_IDLE / 4);
    loop {
        let next = state.queue.peek().map(|p| p.at);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next.unwrap_or_else(far_future)), if next.is_some() => {
                let now = Instant::now();
                while state.queue.peek().is_some_and(|p| p.at <= now) {
                    let p = state.queue.pop().expect("peeked");
                    state.deliver(&listen, p).await;
                }
            }
            r = listen.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if let Err(e) = state.client_packet(from, Bytes::copy_from_slice(&buf[..n])).await {
                        tracing::debug!(error = %e, "impair: cannot open an upstream socket");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "impair: receive failed"),
            },
            Some((flow, data)) = rx.recv() => state.admit(flow, Dir::Down, data),
            _ = sweep.tick() => state.forget_idle(),
        }
    }
    for f in state.flows.values() {
        f.reader.abort();
    }
    state.stats
}
