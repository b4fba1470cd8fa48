//! A TCP proxy for fault tests: it forwards a loopback port to a real server (Postgres, Redis)
//! and can be told to **cut** every connection and refuse new ones (its listening socket is
//! closed, so clients get `ECONNREFUSED`) until it is **restored**, to cut by itself once a given
//! number of bytes went one way (to land a cut in the middle of a transaction or a batch), and to
//! **throttle** every connection to a byte rate (a slow dependency). Plain threads, no runtime.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A direction of traffic through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client (deriver) to server.
    Up,
    /// Server to client (deriver).
    Down,
}

/// One condition of an armed cut; the steps are met in order, and the chunk of traffic that
/// meets the last one is not forwarded.
#[derive(Debug, Clone)]
pub enum Step {
    /// These bytes went by in this direction (matched within one connection's stream).
    Pattern(Dir, Vec<u8>),
    /// This many more bytes went in this direction (over all connections), counted from when
    /// the previous step was met.
    Bytes(Dir, u64),
}

struct Armed {
    steps: std::collections::VecDeque<Step>,
    /// The byte counters (up, down) when the current step began.
    base: (u64, u64),
}

struct Inner {
    port: u16,
    upstream: SocketAddr,
    /// While true the listener is closed and no connection lives.
    down: Mutex<bool>,
    down_changed: Condvar,
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
    /// An armed cut.
    trigger: Mutex<Option<Armed>>,
    cuts: AtomicU64,
    accepted: AtomicU64,
    /// Bytes per second per connection and direction; 0 = unlimited.
    rate: AtomicU64,
    stop: AtomicBool,
}

pub struct Proxy {
    pub port: u16,
    inner: Arc<Inner>,
}

impl Proxy {
    /// Starts forwarding a free loopback port to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let inner = Arc::new(Inner {
            port,
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            down: Mutex::new(false),
            down_changed: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            up_bytes: AtomicU64::new(0),
            down_bytes: AtomicU64::new(0),
            trigger: Mutex::new(None),
            cuts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let i = inner.clone();
        std::thread::Builder::new().name(format!("proxy-{port}")).spawn(move || accept_loop(i, listener)).unwrap();
        Proxy { port, inner }
    }

    /// `postgres://…` or `redis://…` URL through the proxy: `url` with its port replaced.
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }

    /// Cuts every connection (both directions shut down) and refuses new ones until [`restore`].
    pub fn cut(&self) {
        cut(&self.inner);
    }

    /// Accepts connections again (the same port).
    pub fn restore(&self) {
        *self.inner.trigger.lock().unwrap() = None;
        let mut down = self.inner.down.lock().unwrap();
        *down = false;
        self.inner.down_changed.notify_all();
    }

    pub fn is_down(&self) -> bool {
        *self.inner.down.lock().unwrap()
    }

    /// Arms a cut that happens once `bytes` more bytes went in direction `dir` (the chunk that
    /// crosses the threshold is not forwarded).
    pub fn cut_after(&self, dir: Dir, bytes: u64) {
        self.cut_when(vec![Step::Bytes(dir, bytes)]);
    }

    /// Arms a cut that happens once every step was met, in order.
    pub fn cut_when(&self, steps: Vec<Step>) {
        let base = (self.bytes(Dir::Up), self.bytes(Dir::Down));
        *self.inner.trigger.lock().unwrap() = Some(Armed { steps: steps.into(), base });
    }

    /// Waits until the proxy is down (an armed cut happened); false on timeout.
    pub fn wait_down(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut down = self.inner.down.lock().unwrap();
        while !*down {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            down = self.inner.down_changed.wait_timeout(down, left).unwrap().0;
        }
        true
    }

    /// Limits every connection to `bytes_per_sec` in each direction (`None`: unlimited).
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.inner.rate.store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Bytes forwarded in a direction since the start.
    pub fn bytes(&self, dir: Dir) -> u64 {
        match dir {
            Dir::Up => self.inner.up_bytes.load(Ordering::SeqCst),
            Dir::Down => self.inner.down_bytes.load(Ordering::SeqCst),
        }
    }

    /// How many cuts happened (by [`cut`] or an armed trigger).
    pub fn cuts(&self) -> u64 {
        self.inner.cuts.load(Ordering::SeqCst)
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.inner.conns.lock().unwrap().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        cut(&self.inner);
    }
}

fn cut(inner: &Inner) {
    {
        let mut down = inner.down.lock().unwrap();
        *down = true;
        inner.down_changed.notify_all();
    }
    *inner.trigger.lock().unwrap() = None;
    inner.cuts.fetch_add(1, Ordering::SeqCst);
    let conns: Vec<(TcpStream, TcpStream)> = inner.conns.lock().unwrap().drain().map(|(_, c)| c).collect();
    for (a, b) in conns {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    }
}

fn accept_loop(inner: Arc<Inner>, first: TcpListener) {
    let mut listener = Some(first);
    while !inner.stop.load(Ordering::SeqCst) {
        if *inner.down.lock().unwrap() {
            // Closed: connection attempts are refused by the kernel.
            listener = None;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if listener.is_none() {
            // SO_REUSEADDR (std sets it on Unix) lets the port be bound again at once.
            match TcpListener::bind(("127.0.0.1", inner.port)) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        match listener.as_ref().unwrap().accept() {
            Ok((client, _)) => {
                let i = inner.clone();
                std::thread::spawn(move || connect(i, client));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn connect(inner: Arc<Inner>, client: TcpStream) {
    client.set_nonblocking(false).unwrap();
    let Ok(server) = TcpStream::connect_timeout(&inner.upstream, Duration::from_secs(10)) else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
    {
        // Registered under the lock a cut drains, after checking that no cut happened meanwhile.
        let mut conns = inner.conns.lock().unwrap();
        if *inner.down.lock().unwrap() {
            return;
        }
        conns.insert(id, (client.try_clone().unwrap(), server.try_clone().unwrap()));
    }
    inner.accepted.fetch_add(1, Ordering::SeqCst);
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let i = inner.clone();
    let up = std::thread::spawn(move || pump(&i, c2, s2, Dir::Up));
    pump(&inner, server, client, Dir::Down);
    let _ = up.join();
    inner.conns.lock().unwrap().remove(&id);
}

fn pump(inner: &Inner, mut from: TcpStream, mut to: TcpStream, dir: Dir) {
    let counter = match dir {
        Dir::Up => &inner.up_bytes,
        Dir::Down => &inner.down_bytes,
    };
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous chunk, so a pattern split between two reads is still found.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let rate = inner.rate.load(Ordering::SeqCst);
        // Throttled: small reads, so the rate is smooth and the kernel buffers fill up behind.
        let max = if rate > 0 { (rate / 20).clamp(1, buf.len() as u64) as usize } else { buf.len() };
        let n = match from.read(&mut buf[..max]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let fire = {
            let mut t = inner.trigger.lock().unwrap();
            let mut fire = false;
            if let Some(armed) = t.as_mut() {
                let mut window = std::mem::take(&mut tail);
                window.extend_from_slice(&buf[..n]);
                loop {
                    let met = match armed.steps.front() {
                        Some(Step::Pattern(d, pat)) => *d == dir && window.windows(pat.len()).any(|w| w == pat.as_slice()),
                        Some(Step::Bytes(d, want)) => {
                            let base = if *d == Dir::Up { armed.base.0 } else { armed.base.1 };
                            *d == dir && counter.load(Ordering::SeqCst) + n as u64 - base >= *want
                        }
                        None => break,
                    };
                    if !met {
                        break;
                    }
                    armed.steps.pop_front();
                    armed.base = (inner.up_bytes.load(Ordering::SeqCst), inner.down_bytes.load(Ordering::SeqCst));
                }
                fire = armed.steps.is_empty();
                let keep = window.len().min(256);
                tail = window[window.len() - keep..].to_vec();
            }
            if fire {
                *t = None;
            }
            fire
        };
        if fire {
            cut(inner);
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::SeqCst);
        if let Some(nanos) = (n as u64 * 1_000_000_000).checked_div(rate) {
            std::thread::sleep(Duration::from_nanos(nanos));
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
