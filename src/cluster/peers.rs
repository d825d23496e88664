//! Peer watch: the launchers of one multi-node job stop together.
//!
//! torchrun's c10d rendezvous forms the job, but once training runs nothing tells the other
//! nodes that one node's launcher is gone (killed, crashed, its node lost): their workers wait in
//! an NCCL collective for ranks that will never answer until NCCL's timeout, ten minutes or more
//! of every GPU of the job. So the launchers keep a small side channel of their own, beside
//! torchrun's (which they do not touch): node 0's launcher listens on the watch port, every other
//! node's launcher holds one TCP connection to it.
//!
//! # The job secret
//!
//! The port is open to anyone who can reach node 0, so every connection is authenticated with a
//! secret that only the job's own nodes know ([`JobSecret`]):
//! - `VLA_LAUNCH_JOB_SECRET` in the job's environment (at least 32 characters; the shipped sbatch
//!   recipe creates one per job; Slurm hands the batch environment to every task, and
//!   `/proc/PID/environ` is readable by the job's owner only), or else
//! - a file `<run root>/vla-launch/.secrets/job-<JOB_ID>.key` on the shared file system: node 0
//!   creates it once (exclusively, mode 0600, in a 0700 directory it owns), the other nodes wait
//!   for it (bounded, [`SECRET_WAIT`]) and refuse it unless it is theirs and private.
//!
//! Without a secret the watch does not run, and the launcher says so loudly with the fix.
//!
//! # Protocol (ASCII lines of at most [`MAX_LINE`] bytes)
//!
//! 1. node 0 -> node n: `challenge NONCE_0` (16 fresh random bytes, hex).
//! 2. node n -> node 0: `hello JOB_ID n NONCE_N MAC` with
//!    `MAC = HMAC-SHA256(secret, "hello", job, n, NONCE_0, NONCE_N)`. Node 0 checks the job, that
//!    `0 < n < nnodes`, the MAC, and that node n has no authenticated connection already (one is
//!    never replaced by another).
//! 3. node 0 -> node n: `welcome MAC'` with `MAC' = HMAC-SHA256(secret, "welcome", ...)`: node n
//!    knows it talks to its own node 0 (both directions authenticated).
//! 4. From then on both sides use `key = HMAC-SHA256(secret, "session", ...)` and send
//!    `SEQ BODY MAC` with `MAC = HMAC-SHA256(key, direction, SEQ, BODY)`, SEQ counting from 0 in
//!    each direction: a replayed, reordered or injected line fails and is dropped.
//!
//! Bodies: `ping` (on its own timer, every [`Timing::ping_every`], whatever is read), `exit CODE`
//! (this node's torchrun ended), and from node 0 `stop NODE failed CODE` / `stop NODE gone` /
//! `stop NODE lost SECONDS` (another node failed; the cause travels as data, never as text).
//!
//! A node stops its own run (as if it had received SIGTERM: torchrun gets it, then the grace
//! period) when: a peer reports a non-zero exit, a peer's authenticated connection ends without
//! an `exit` line (SIGKILL, crash), nothing authenticated arrives for [`Timing::silence_limit`]
//! (a lost node), or node 0 says `stop`. The stop carries a [`PeerStop`]: which node, and its exit
//! code or how it was lost. Nothing unauthenticated can stop a node: a connection that fails the
//! handshake is closed and, on node n, retried.
//!
//! # Bounds
//!
//! At most [`MAX_PENDING`] connections are in their handshake at once, and at most
//! [`MAX_PENDING_PER_ADDRESS`] from one address (more are closed at once), each for at most
//! [`Timing::auth_deadline`] by the clock; lines are read with a limit; one thread per handshake
//! or authenticated node, plus the accept and heartbeat threads. Errors from `accept` (EMFILE...)
//! are retried with backoff. Peer text is never printed raw ([`printable`]); refused connections
//! are logged for the first few only.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How often each side writes `ping` (and checks for silence), in a real job.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// No authenticated line for this long: the other side is taken for lost.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// A connection must finish its handshake this soon after it is accepted.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);
/// Longest line read; longer ones close an unauthenticated connection and are dropped otherwise.
pub const MAX_LINE: usize = 256;
/// Connections in their handshake at once on node 0; more are closed as soon as accepted.
pub const MAX_PENDING: usize = 16;
/// Of those, at most this many from one address.
pub const MAX_PENDING_PER_ADDRESS: usize = 4;
/// How long a node waits for node 0 to create the job's secret file.
pub const SECRET_WAIT: Duration = Duration::from_secs(120);
/// The environment variable that carries the job's secret.
pub const SECRET_ENV: &str = "VLA_LAUNCH_JOB_SECRET";
/// Shortest secret taken (characters of the variable, or of the file).
pub const MIN_SECRET_LEN: usize = 32;

/// The watch's clocks. [`Timing::default`] is what a job uses; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ping_every: Duration,
    pub silence_limit: Duration,
    pub auth_deadline: Duration,
    /// Node 0 warns when a node has not connected after this long; a node warns when node 0
    /// has not answered after this long.
    pub connect_warn_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping_every: PING_EVERY,
            silence_limit: SILENCE_LIMIT,
            auth_deadline: AUTH_DEADLINE,
            connect_warn_after: Duration::from_secs(120),
        }
    }
}

/// The watch port for a rendezvous port: 10000 below it (the derived rendezvous ports are
/// 20000-28999, so 10000-18999, clear of torchrun's 29400/29500 and the ephemeral range), or
/// 10000 above a rendezvous port too low for that.
pub fn watch_port(rdzv_port: u16) -> u16 {
    if rdzv_port > 11_024 {
        rdzv_port - 10_000
    } else {
        rdzv_port.saturating_add(10_000)
    }
}

/// `Err` when something already listens on `port` on this host (all interfaces), e.g. node 0's
/// rendezvous port before torchrun is started.
pub fn check_port_free(port: u16) -> io::Result<()> {
    TcpListener::bind(("0.0.0.0", port)).map(drop)
}

/// Peer-supplied bytes made safe to print: control characters, quotes and non-ASCII escaped,
/// at most `max` input bytes shown.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let mut out: String = bytes
        .iter()
        .take(max)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Why a node stops

/// How a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerFailure {
    /// Its torchrun ended with this non-zero exit code.
    Failed { exit_code: i32 },
    /// Its connection ended without an `exit` line (launcher killed, crashed).
    Gone,
    /// Nothing heard from it for this many seconds.
    Lost { silent_s: u64 },
}

/// A stop caused by a peer: which node, and how it failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStop {
    pub node: u32,
    #[serde(flatten)]
    pub failure: PeerFailure,
}

impl PeerStop {
    /// The failing node's exit code, when it reported one.
    pub fn exit_code(&self) -> Option<i32> {
        match self.failure {
            PeerFailure::Failed { exit_code } => Some(exit_code),
            _ => None,
        }
    }

    fn wire(&self) -> String {
        match self.failure {
            PeerFailure::Failed { exit_code } => format!("stop {} failed {exit_code}", self.node),
            PeerFailure::Gone => format!("stop {} gone", self.node),
            PeerFailure::Lost { silent_s } => format!("stop {} lost {silent_s}", self.node),
        }
    }

    fn parse_wire(words: &[&str]) -> Option<PeerStop> {
        let node = words.first()?.parse().ok()?;
        let failure = match words[1..] {
            ["failed", code] => PeerFailure::Failed {
                exit_code: code.parse().ok()?,
            },
            ["gone"] => PeerFailure::Gone,
            ["lost", s] => PeerFailure::Lost {
                silent_s: s.parse().ok()?,
            },
            _ => return None,
        };
        Some(PeerStop { node, failure })
    }
}

impl fmt::Display for PeerStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.node;
        match self.failure {
            PeerFailure::Failed { exit_code } => {
                write!(f, "node {n}'s training ended with exit {exit_code}")
            }
            PeerFailure::Gone => write!(f, "node {n}'s launcher is gone without reporting an exit"),
            PeerFailure::Lost { silent_s } => write!(
                f,
                "node {n}'s launcher has not been heard from for {silent_s} s (node lost?)"
            ),
        }
    }
}

/// Called once, with the cause, when this node's run must stop.
pub type OnStop = Arc<dyn Fn(PeerStop) + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// The job secret

/// Why no usable secret was found; each names the variable or file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "{SECRET_ENV} is set but has {len} characters; it needs at least {MIN_SECRET_LEN} (e.g. `export {SECRET_ENV}=$(openssl rand -hex 32)` in the sbatch script)"
    )]
    EnvTooShort { len: usize },
    #[error("{path}: {why}; fix: {fix}")]
    File {
        path: PathBuf,
        why: String,
        fix: String,
    },
    #[error(
        "node 0 has not created {path} within {waited_s} s; fix: put the run root on a file system every node shares, or set {SECRET_ENV} in the job's environment (e.g. `export {SECRET_ENV}=$(openssl rand -hex 32)` in the sbatch script)"
    )]
    NotCreated { path: PathBuf, waited_s: u64 },
}

/// The secret the nodes of one job share. Its bytes are never printed.
#[derive(Clone)]
pub struct JobSecret(Vec<u8>);

impl fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobSecret(..)")
    }
}

impl JobSecret {
    /// From the value of [`SECRET_ENV`].
    pub fn from_env_value(value: &str) -> Result<JobSecret, SecretError> {
        let v = value.trim();
        if v.len() < MIN_SECRET_LEN {
            return Err(SecretError::EnvTooShort { len: v.len() });
        }
        Ok(JobSecret(v.as_bytes().to_vec()))
    }

    /// 32 fresh random bytes (hex).
    pub fn generate() -> io::Result<JobSecret> {
        Ok(JobSecret(hex(&random_bytes::<32>()?).into_bytes()))
    }

    /// The secret file of job `job` in `dir` (`<run root>/vla-launch/.secrets`).
    pub fn file_path(dir: &Path, job: &str) -> PathBuf {
        let safe: String = job
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        dir.join(format!("job-{safe}.key"))
    }

    /// Node 0: the job's secret file in `dir`, created (0700 directory, 0600 file, exclusively)
    /// unless it exists already (a requeued job), in which case it is read and checked.
    pub fn create_file(dir: &Path, job: &str) -> Result<JobSecret, SecretError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = JobSecret::file_path(dir, job);
        let file_err = |why: String, fix: &str| SecretError::File {
            path: path.clone(),
            why,
            fix: fix.to_string(),
        };
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            Ok(()) => {}
            Err(e) => {
                return Err(file_err(
                    format!("cannot create its directory ({e})"),
                    &format!("make the run root writable, or set {SECRET_ENV}"),
                ));
            }
        }
        check_private(dir, true).map_err(|why| {
            file_err(
                why,
                &format!("`chmod 700 {}` (owned by you)", dir.display()),
            )
        })?;
        if path.exists() {
            return JobSecret::read_file(&path);
        }
        let secret = JobSecret::generate().map_err(|e| {
            file_err(
                format!("no random bytes ({e})"),
                &format!("set {SECRET_ENV}"),
            )
        })?;
        // Written whole under a private temporary name, then linked into place: a reader sees
        // no file or the whole file, and of two writers only one link succeeds.
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            hex(&random_bytes::<4>().unwrap_or_default())
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&secret.0)?;
                f.sync_all()
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(file_err(
                format!("cannot write it ({e})"),
                &format!("make the run root writable, or set {SECRET_ENV}"),
            ));
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(secret),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => JobSecret::read_file(&path),
            Err(e) => Err(file_err(
                format!("cannot create it ({e})"),
                &format!("use a file system with hard links for the run root, or set {SECRET_ENV}"),
            )),
        }
    }

    /// Node n: wait (at most `wait`) for node 0 to create the job's secret file in `dir`.
    pub fn wait_for_file(dir: &Path, job: &str, wait: Duration) -> Result<JobSecret, SecretError> {
        let path = JobSecret::file_path(dir, job);
        let until = Instant::now() + wait;
        loop {
            if path.exists() {
                return JobSecret::read_file(&path);
            }
            if Instant::now() >= until {
                return Err(SecretError::NotCreated {
                    path,
                    waited_s: wait.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn read_file(path: &Path) -> Result<JobSecret, SecretError> {
        let file_err = |why: String, fix: String| SecretError::File {
            path: path.to_path_buf(),
            why,
            fix,
        };
        check_private(path, false).map_err(|why| {
            file_err(
                why,
                format!("remove it and let node 0 create it again, or set {SECRET_ENV}"),
            )
        })?;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(4096).read_to_end(&mut bytes))
            .map_err(|e| file_err(format!("cannot read it ({e})"), format!("set {SECRET_ENV}")))?;
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if text.len() < MIN_SECRET_LEN {
            return Err(file_err(
                format!(
                    "holds {} characters, fewer than {MIN_SECRET_LEN}",
                    text.len()
                ),
                "remove it and let node 0 create it again".into(),
            ));
        }
        Ok(JobSecret(text.into_bytes()))
    }
}

/// `path` is owned by this user and nobody else may read it (no group/other permission bits).
fn check_private(path: &Path, dir: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).map_err(|e| format!("cannot inspect it ({e})"))?;
    if dir != m.is_dir() || (!dir && !m.is_file()) {
        return Err(if dir {
            "is not a directory".into()
        } else {
            "is not a plain file".into()
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(format!(
            "is owned by uid {}, not by you (uid {me})",
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "has mode {:o}: others may read it",
            m.mode() & 0o777
        ));
    }
    Ok(())
}

fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn mac_of(key: &[u8], parts: &[&str]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p.as_bytes());
    }
    m
}

fn mac_hex(key: &[u8], parts: &[&str]) -> String {
    hex(&mac_of(key, parts).finalize().into_bytes())
}

/// Constant-time check of a hex MAC.
fn mac_ok(key: &[u8], parts: &[&str], given: &str) -> bool {
    match unhex(given) {
        Some(g) => mac_of(key, parts).verify_slice(&g).is_ok(),
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The watch

/// What the nodes of one job share: its id, its node count, its secret, the watch's clocks.
#[derive(Debug, Clone)]
pub struct WatchJob {
    pub id: String,
    pub nnodes: u32,
    pub secret: JobSecret,
    pub timing: Timing,
}

/// A running watch; [`PeerWatch::finish`] reports this node's exit to the others.
pub struct PeerWatch {
    shared: Arc<Shared>,
    /// Node 0: the port it listens on.
    port: Option<u16>,
    /// Node 0: the accept loop, joined by `finish` so the port is free again afterwards.
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    job: String,
    node_rank: u32,
    nnodes: u32,
    /// Set at start, or (node n) by its watch thread once node 0 has created the secret file.
    secret: std::sync::OnceLock<JobSecret>,
    loader: Mutex<Option<SecretLoader>>,
    timing: Timing,
    /// Node n: node 0's `host:port`.
    target: Option<String>,
    /// This node's run has ended: losses after this are expected, not failures.
    finished: AtomicBool,
    /// Its exit code, set before `finished`.
    exit_code: AtomicI32,
    /// `on_stop` already called.
    stopped: AtomicBool,
    on_stop: OnStop,
    /// Authenticated connections (node 0: one per node; node n: the one to node 0).
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Node 0: nodes that have authenticated once.
    seen: Mutex<Vec<u32>>,
    /// Node 0: connections in their handshake, by address.
    pending: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Node 0: connections refused so far (only the first few are logged).
    refusals: AtomicUsize,
}

/// Finds the job's secret later (node n waiting for node 0's file).
type SecretLoader = Box<dyn FnOnce() -> Result<JobSecret, SecretError> + Send>;

const OFF: &str = "PEER WATCH OFF: if a node fails, the other nodes' training waits for NCCL's timeout (10 min or more) instead of stopping";

impl Shared {
    /// The secret's bytes; only called once it is known (before any handshake).
    fn key(&self) -> &[u8] {
        &self
            .secret
            .get()
            .expect("the secret is known before any handshake")
            .0
    }

    /// Logs a refused connection; a flood of them is not logged line by line.
    fn refused(&self, msg: String) {
        match self.refusals.fetch_add(1, Ordering::SeqCst) {
            0..5 => tracing::warn!("{msg}"),
            5 => tracing::warn!("{msg}; further refused connections are not logged"),
            _ => tracing::debug!("{msg}"),
        }
    }

    fn stop(&self, why: PeerStop) {
        if self.finished.load(Ordering::SeqCst) || self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        (self.on_stop)(why);
    }

    fn conns(&self) -> Vec<Arc<Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A peer failed: node 0 tells every other node, then this node stops.
    fn failed(&self, why: PeerStop) {
        if self.finished.load(Ordering::SeqCst) || self.stopped.load(Ordering::SeqCst) {
            return;
        }
        if self.node_rank == 0 {
            for c in self.conns() {
                if c.rank != why.node {
                    let _ = c.send(&why.wire());
                }
            }
        }
        self.stop(why);
    }
}

/// One authenticated connection.
struct Conn {
    /// The other side's node rank.
    rank: u32,
    key: [u8; 32],
    /// Direction labels: what this side sends, what it receives.
    out_dir: &'static str,
    in_dir: &'static str,
    writer: Mutex<(TcpStream, u64)>,
    last_heard: Mutex<Instant>,
    clean_exit: AtomicBool,
}

impl Conn {
    fn send(&self, body: &str) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let seq = w.1.to_string();
        let mac = mac_hex(&self.key, &[self.out_dir, &seq, body]);
        w.1 += 1;
        w.0.write_all(format!("{seq} {body} {mac}\n").as_bytes())
    }

    fn shutdown(&self) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = w.0.shutdown(std::net::Shutdown::Both);
    }

    /// The body of an authenticated line with sequence number `seq`, or `None`.
    fn open<'a>(&self, line: &'a str, seq: u64) -> Option<&'a str> {
        let (rest, mac) = line.rsplit_once(' ')?;
        let (s, body) = rest.split_once(' ')?;
        (s == seq.to_string() && mac_ok(&self.key, &[self.in_dir, s, body], mac)).then_some(body)
    }
}

impl PeerWatch {
    /// Node 0 of an `nnodes`-node job: listen on `port` (all interfaces; 0 for any free port)
    /// for the other nodes' launchers.
    pub fn hub(job: WatchJob, port: u16, on_stop: OnStop) -> io::Result<PeerWatch> {
        let listener = TcpListener::bind(("0.0.0.0", port))?;
        listener.set_nonblocking(true)?;
        let mut watch = PeerWatch::new(job, 0, None, on_stop);
        watch.port = Some(listener.local_addr()?.port());
        let shared = watch.shared.clone();
        watch.acceptor = Some(
            std::thread::Builder::new()
                .name("vla-peers-accept".into())
                .spawn(move || accept_loop(listener, shared))?,
        );
        let shared = watch.shared.clone();
        std::thread::Builder::new()
            .name("vla-peers-beat".into())
            .spawn(move || heartbeat(shared))?;
        Ok(watch)
    }

    /// Node `node_rank` > 0: connect to node 0's launcher at `host:port`, retrying until it
    /// answers and authenticates (it may start later than this node) or this run ends.
    pub fn peer(
        job: WatchJob,
        node_rank: u32,
        host: &str,
        port: u16,
        on_stop: OnStop,
    ) -> io::Result<PeerWatch> {
        let target = target_of(host, port);
        PeerWatch::new(job, node_rank, Some(target), on_stop).spawn_peer()
    }

    /// Like [`PeerWatch::peer`], the secret found later by `loader` on the watch's own thread
    /// (node 0 may create the secret file after this node starts): training is not held up.
    fn peer_later(w: &NodeWatch, loader: SecretLoader, on_stop: OnStop) -> io::Result<PeerWatch> {
        let target = target_of(&w.host, w.port);
        let watch = PeerWatch::unkeyed(
            &w.job_id,
            w.nnodes,
            w.timing,
            w.node_rank,
            Some(target),
            on_stop,
        );
        *watch
            .shared
            .loader
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(loader);
        watch.spawn_peer()
    }

    fn spawn_peer(self) -> io::Result<PeerWatch> {
        let shared = self.shared.clone();
        let target = shared.target.clone().unwrap_or_default();
        std::thread::Builder::new()
            .name("vla-peers".into())
            .spawn(move || peer_loop(&target, shared))?;
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("vla-peers-beat".into())
            .spawn(move || heartbeat(shared))?;
        Ok(self)
    }

    /// Node 0: the port it listens on (the one asked for, or the one given for port 0).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    fn new(job: WatchJob, node_rank: u32, target: Option<String>, on_stop: OnStop) -> PeerWatch {
        let w = PeerWatch::unkeyed(&job.id, job.nnodes, job.timing, node_rank, target, on_stop);
        let _ = w.shared.secret.set(job.secret);
        w
    }

    fn unkeyed(
        id: &str,
        nnodes: u32,
        timing: Timing,
        node_rank: u32,
        target: Option<String>,
        on_stop: OnStop,
    ) -> PeerWatch {
        PeerWatch {
            port: None,
            acceptor: None,
            shared: Arc::new(Shared {
                job: id.to_string(),
                node_rank,
                nnodes,
                secret: std::sync::OnceLock::new(),
                loader: Mutex::new(None),
                timing,
                target,
                finished: AtomicBool::new(false),
                exit_code: AtomicI32::new(0),
                stopped: AtomicBool::new(false),
                on_stop,
                conns: Mutex::new(Vec::new()),
                seen: Mutex::new(Vec::new()),
                pending: Mutex::new(std::collections::HashMap::new()),
                refusals: AtomicUsize::new(0),
            }),
        }
    }

    /// This node's torchrun ended with `exit_code`: tell the other side(s) and close.
    pub fn finish(mut self, exit_code: i32) {
        let shared = &self.shared;
        shared.exit_code.store(exit_code, Ordering::SeqCst);
        shared.finished.store(true, Ordering::SeqCst);
        let conns = std::mem::take(&mut *shared.conns.lock().unwrap_or_else(|p| p.into_inner()));
        let keyed = shared.secret.get().is_some();
        if let (true, true, Some(target)) = (keyed, conns.is_empty(), &shared.target) {
            // Stopped before the watch connected (node 0's launcher came up later): a failure
            // must still reach node 0, so say it on a short-lived connection.
            if exit_code != 0 {
                if let Some(s) = connect(target, Duration::from_secs(2)) {
                    let deadline = Instant::now() + Duration::from_secs(2);
                    if let Ok((conn, _)) = handshake_peer(s, shared, deadline) {
                        let _ = conn.send(&format!("exit {exit_code}"));
                        conn.shutdown();
                    }
                }
            }
        }
        for c in conns {
            let _ = c.send(&format!("exit {exit_code}"));
            c.shutdown();
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// A port that node 0 needs is taken; names the flag that chooses another.
#[derive(Debug, thiserror::Error)]
#[error(
    "port {port} ({flag}) is already in use on node 0 ({err}): another job or program listens on it. Fix: pass a free port with {flag} PORT, the same on every node of the job"
)]
pub struct PortTaken {
    pub flag: &'static str,
    pub port: u16,
    pub err: io::Error,
}

/// Node 0: its rendezvous port must be free before torchrun is started to host it.
pub fn check_rendezvous_port(port: u16) -> Result<(), PortTaken> {
    check_port_free(port).map_err(|err| PortTaken {
        flag: "--rdzv-port",
        port,
        err,
    })
}

/// Whether `addr` is one of this machine's own addresses (it can be bound).
fn is_local(addr: std::net::IpAddr) -> bool {
    addr.is_loopback() || std::net::UdpSocket::bind((addr, 0)).is_ok()
}

/// A loud warning when node 0's name (`host`, from the rendezvous endpoint) does not resolve
/// here, or, on node 0, resolves to addresses that are not this machine's.
pub fn rendezvous_host_warning(host: &str, port: u16, node_rank: u32) -> Option<String> {
    let addrs: Vec<std::net::IpAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.map(|a| a.ip()).collect(),
        Err(e) => {
            return Some(format!(
                "node 0's name {host:?} (the rendezvous host) does not resolve on node {node_rank} ({e}): torchrun's rendezvous and the peer watch cannot reach node 0. Fix: make the node names resolve on every node (DNS or /etc/hosts), or pass --rdzv-endpoint ADDRESS:PORT with node 0's address"
            ));
        }
    };
    if node_rank == 0 && !addrs.iter().any(|a| is_local(*a)) {
        let own = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let shown: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        return Some(format!(
            "node 0's name {host:?} resolves to {} here, none of them this machine's (hostname {own:?}): the other nodes will look for node 0's rendezvous and peer watch there. Fix: make {host:?} resolve to this host on every node (DNS or /etc/hosts), or pass --rdzv-endpoint ADDRESS:PORT with this node's address",
            shown.join(", ")
        ));
    }
    None
}

/// What one node needs to start its watch.
#[derive(Debug, Clone)]
pub struct NodeWatch {
    pub job_id: String,
    pub nnodes: u32,
    pub node_rank: u32,
    /// Node 0's name or address (from the rendezvous endpoint).
    pub host: String,
    pub port: u16,
    /// The value of [`SECRET_ENV`], if set.
    pub env_secret: Option<String>,
    /// Where node 0 creates the secret file when there is no [`SECRET_ENV`]: a directory on
    /// the file system every node shares (`<run root>/vla-launch/.secrets`).
    pub secrets_dir: PathBuf,
    pub secret_wait: Duration,
    pub timing: Timing,
}

/// The job's secret, as the module header says: the environment first, else the file.
pub fn job_secret(w: &NodeWatch) -> Result<JobSecret, SecretError> {
    match &w.env_secret {
        Some(v) => JobSecret::from_env_value(v),
        None if w.node_rank == 0 => JobSecret::create_file(&w.secrets_dir, &w.job_id),
        None => JobSecret::wait_for_file(&w.secrets_dir, &w.job_id, w.secret_wait),
    }
}

/// Starts this node's watch. `Ok(None)` when it cannot run (no secret, node 0 unreachable...),
/// after a loud warning that says how to fix it; `Err` when node 0's watch port is taken.
pub fn start_node_watch(w: &NodeWatch, on_stop: OnStop) -> Result<Option<PeerWatch>, PortTaken> {
    if let Some(msg) = rendezvous_host_warning(&w.host, w.port, w.node_rank) {
        tracing::warn!("{msg}");
    }
    if w.node_rank > 0 && w.env_secret.is_none() {
        // Node 0 may create the file after this node gets here: wait on the watch's thread.
        let (dir, id, wait) = (w.secrets_dir.clone(), w.job_id.clone(), w.secret_wait);
        let loader: SecretLoader = Box::new(move || JobSecret::wait_for_file(&dir, &id, wait));
        return match PeerWatch::peer_later(w, loader, on_stop) {
            Ok(watch) => Ok(Some(watch)),
            Err(e) => {
                tracing::warn!("{OFF}. It could not start ({e})");
                Ok(None)
            }
        };
    }
    let secret = match job_secret(w) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("{OFF}. No job secret: {e}");
            return Ok(None);
        }
    };
    let job = WatchJob {
        id: w.job_id.clone(),
        nnodes: w.nnodes,
        secret,
        timing: w.timing,
    };
    let started = if w.node_rank == 0 {
        PeerWatch::hub(job, w.port, on_stop)
    } else {
        PeerWatch::peer(job, w.node_rank, &w.host, w.port, on_stop)
    };
    match started {
        Ok(watch) => Ok(Some(watch)),
        Err(err) if w.node_rank == 0 && err.kind() == io::ErrorKind::AddrInUse => Err(PortTaken {
            flag: "--peer-watch-port",
            port: w.port,
            err,
        }),
        Err(e) => {
            tracing::warn!(
                "{OFF}. It could not start on port {} ({e}). Fix: choose a free port with --peer-watch-port PORT on every node",
                w.port
            );
            Ok(None)
        }
    }
}

/// Frees one handshake slot when dropped.
struct PendingSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl PendingSlot {
    /// A handshake slot for a connection from `ip`: `None` when [`MAX_PENDING`] are taken, or
    /// [`MAX_PENDING_PER_ADDRESS`] by that address (one outsider cannot take them all).
    fn take(shared: &Arc<Shared>, ip: std::net::IpAddr) -> Option<PendingSlot> {
        let mut by_ip = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = by_ip.values().sum();
        let mine = by_ip.entry(ip).or_insert(0);
        if total >= MAX_PENDING || *mine >= MAX_PENDING_PER_ADDRESS {
            return None;
        }
        *mine += 1;
        Some(PendingSlot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut by_ip = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(10);
    let mut warned = false;
    while !shared.finished.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, from)) => {
                backoff = Duration::from_millis(10);
                let Some(slot) = PendingSlot::take(&shared, from.ip()) else {
                    drop(stream);
                    continue;
                };
                let s = shared.clone();
                // A failed spawn drops the closure, the slot with it.
                let _ = std::thread::Builder::new()
                    .name("vla-peer".into())
                    .spawn(move || serve_peer(stream, from, s, slot));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS...: the watch stays on, accepting again shortly.
                if !warned {
                    tracing::warn!(
                        "peer watch: accepting a connection failed ({e}); retrying with backoff"
                    );
                    warned = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    // Dropping the listener frees the port (an OOM retry starts a new watch on it).
}

fn session_key(shared: &Shared, rank: &str, nonce0: &str, nonce_n: &str) -> [u8; 32] {
    mac_of(
        shared.key(),
        &["session", &shared.job, rank, nonce0, nonce_n],
    )
    .finalize()
    .into_bytes()
    .into()
}

/// Node 0's side of one connection: handshake, then watch the node it authenticated as.
fn serve_peer(stream: TcpStream, from: SocketAddr, shared: Arc<Shared>, slot: PendingSlot) {
    let deadline = Instant::now() + shared.timing.auth_deadline;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut lines = LineReader::new(stream);
    let Ok(nonce0) = random_bytes::<16>().map(|b| hex(&b)) else {
        return;
    };
    if writer
        .write_all(format!("challenge {nonce0}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let Some(hello) = lines.line_before(deadline) else {
        return;
    };
    let words: Vec<&str> = hello.split(' ').collect();
    let ["hello", job, rank_text, nonce_n, mac] = words[..] else {
        tracing::debug!("peer watch: {from} sent no hello: closed");
        return;
    };
    if job != shared.job {
        tracing::debug!(
            "peer watch: {from} says it belongs to job {}, not {}: closed",
            printable(job.as_bytes(), 40),
            shared.job
        );
        return;
    }
    let rank = match rank_text.parse::<u32>() {
        Ok(r) if r > 0 && r < shared.nnodes && rank_text == r.to_string() => r,
        _ => {
            shared.refused(format!(
                "peer watch: {from} claimed node rank {} of this {}-node job: closed",
                printable(rank_text.as_bytes(), 20),
                shared.nnodes
            ));
            return;
        }
    };
    if unhex(nonce_n).is_none_or(|n| n.len() != 16)
        || !mac_ok(
            shared.key(),
            &["hello", &shared.job, rank_text, &nonce0, nonce_n],
            mac,
        )
    {
        shared.refused(format!(
            "peer watch: {from} failed authentication as node {rank} (not this job's secret): closed"
        ));
        return;
    }
    let conn = Arc::new(Conn {
        rank,
        key: session_key(&shared, rank_text, &nonce0, nonce_n),
        out_dir: "to-node",
        in_dir: "to-hub",
        writer: Mutex::new((writer, 0)),
        last_heard: Mutex::new(Instant::now()),
        clean_exit: AtomicBool::new(false),
    });
    {
        let mut conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
        if shared.finished.load(Ordering::SeqCst) {
            return;
        }
        if conns.iter().any(|c| c.rank == rank) {
            shared.refused(format!(
                "peer watch: {from} authenticated as node {rank}, which is connected already: closed (the first connection stays)"
            ));
            return;
        }
        let welcome = mac_hex(
            shared.key(),
            &["welcome", &shared.job, rank_text, &nonce0, nonce_n],
        );
        let sent = conn
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .write_all(format!("welcome {welcome}\n").as_bytes());
        if sent.is_err() {
            return;
        }
        conns.push(conn.clone());
        let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains(&rank) {
            seen.push(rank);
        }
    }
    drop(slot);
    tracing::info!("peer watch: node {rank} connected from {from} (authenticated)");
    let why = read_authenticated(&mut lines, &conn, &shared);
    shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|c| !Arc::ptr_eq(c, &conn));
    if let Some(why) = why {
        shared.failed(why);
    }
}

/// Node n's side of the handshake on a fresh connection to node 0.
fn handshake_peer(
    stream: TcpStream,
    shared: &Shared,
    deadline: Instant,
) -> Result<(Arc<Conn>, LineReader), String> {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut lines = LineReader::new(stream);
    let challenge = lines.line_before(deadline).ok_or("no challenge in time")?;
    let nonce0 = match challenge.split(' ').collect::<Vec<_>>()[..] {
        ["challenge", n] if unhex(n).is_some_and(|b| b.len() == 16) => n.to_string(),
        _ => return Err("no challenge".into()),
    };
    let nonce_n = hex(&random_bytes::<16>().map_err(|e| e.to_string())?);
    let rank = shared.node_rank.to_string();
    let mac = mac_hex(
        shared.key(),
        &["hello", &shared.job, &rank, &nonce0, &nonce_n],
    );
    writer
        .write_all(format!("hello {} {rank} {nonce_n} {mac}\n", shared.job).as_bytes())
        .map_err(|e| e.to_string())?;
    let welcome = lines.line_before(deadline).ok_or("no welcome")?;
    let ok = match welcome.split(' ').collect::<Vec<_>>()[..] {
        ["welcome", m] => mac_ok(
            shared.key(),
            &["welcome", &shared.job, &rank, &nonce0, &nonce_n],
            m,
        ),
        _ => false,
    };
    if !ok {
        return Err("its welcome is not signed with this job's secret".into());
    }
    let conn = Arc::new(Conn {
        rank: 0,
        key: session_key(shared, &rank, &nonce0, &nonce_n),
        out_dir: "to-hub",
        in_dir: "to-node",
        writer: Mutex::new((writer, 0)),
        last_heard: Mutex::new(Instant::now()),
        clean_exit: AtomicBool::new(false),
    });
    Ok((conn, lines))
}

/// A node's loop: connect and authenticate (retrying), then watch node 0.
fn peer_loop(target: &str, shared: Arc<Shared>) {
    let loader = shared
        .loader
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(load) = loader {
        match load() {
            Ok(secret) => {
                let _ = shared.secret.set(secret);
            }
            Err(e) => {
                tracing::warn!("{OFF}. No job secret: {e}");
                return;
            }
        }
    }
    let started = Instant::now();
    let mut warned_silent = false;
    let mut refused = 0u32;
    let (conn, mut lines) = loop {
        if shared.finished.load(Ordering::SeqCst) {
            return;
        }
        if let Some(s) = connect(target, Duration::from_secs(2)) {
            let deadline = Instant::now() + shared.timing.auth_deadline;
            match handshake_peer(s, &shared, deadline) {
                Ok(c) => break c,
                Err(why) => {
                    refused += 1;
                    if refused == 3 {
                        tracing::warn!(
                            "peer watch: {target} answers, but not as this job's node 0 ({why}): another job or program may hold the port; retrying. Fix: choose a free port with --peer-watch-port on every node"
                        );
                    }
                }
            }
        }
        if !warned_silent && started.elapsed() > shared.timing.connect_warn_after {
            tracing::warn!(
                "peer watch: node 0's launcher has not answered at {target} for {} s; if a node fails, the others will wait for NCCL's timeout. Check that node 0's name resolves to the same host on every node",
                shared.timing.connect_warn_after.as_secs()
            );
            warned_silent = true;
        }
        // Often at first (the launchers start together), then every second.
        std::thread::sleep(if started.elapsed() < Duration::from_secs(10) {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        });
    };
    {
        let mut conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
        if shared.finished.load(Ordering::SeqCst) {
            // Finished while connecting: finish() missed this connection.
            let code = shared.exit_code.load(Ordering::SeqCst);
            let _ = conn.send(&format!("exit {code}"));
            conn.shutdown();
            return;
        }
        conns.push(conn.clone());
    }
    tracing::info!("peer watch: connected to node 0 at {target} (authenticated)");
    if let Some(why) = read_authenticated(&mut lines, &conn, &shared) {
        shared.stop(why);
    }
}

fn target_of(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn connect(target: &str, timeout: Duration) -> Option<TcpStream> {
    let addr = target.to_socket_addrs().ok()?.next()?;
    TcpStream::connect_timeout(&addr, timeout).ok()
}

/// Sends `ping` to every authenticated connection every `ping_every`, whatever is read, and
/// takes a connection silent for `silence_limit` for a lost node.
fn heartbeat(shared: Arc<Shared>) {
    let t = shared.timing;
    let tick = t.ping_every.min(Duration::from_millis(100));
    let started = Instant::now();
    let mut next = Instant::now() + t.ping_every;
    let mut warned_missing = false;
    loop {
        std::thread::sleep(tick.min(next.saturating_duration_since(Instant::now())));
        if shared.finished.load(Ordering::SeqCst) || shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        if Instant::now() < next {
            continue;
        }
        next += t.ping_every;
        if next < Instant::now() {
            next = Instant::now() + t.ping_every;
        }
        for c in shared.conns() {
            if c.clean_exit.load(Ordering::SeqCst) {
                continue;
            }
            let silent = c
                .last_heard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if silent >= t.silence_limit {
                shared.failed(PeerStop {
                    node: c.rank,
                    failure: PeerFailure::Lost {
                        silent_s: silent.as_secs(),
                    },
                });
                c.shutdown();
                return;
            }
            let _ = c.send("ping");
        }
        if shared.node_rank == 0 && !warned_missing && started.elapsed() > t.connect_warn_after {
            let seen = shared
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let missing: Vec<String> = (1..shared.nnodes)
                .filter(|n| !seen.contains(n))
                .map(|n| n.to_string())
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    "peer watch: node(s) {} have not connected to node 0 after {} s: if one fails, the others wait for NCCL's timeout. Check that node 0's name resolves to this host on every node, that they use the same --peer-watch-port and job secret ({SECRET_ENV} or the run root's .secrets file)",
                    missing.join(", "),
                    t.connect_warn_after.as_secs()
                );
            }
            warned_missing = true;
        }
    }
}

/// Reads the other side's authenticated lines until it leaves. `Some(cause)` for a failure.
fn read_authenticated(lines: &mut LineReader, conn: &Conn, shared: &Shared) -> Option<PeerStop> {
    let mut seq = 0u64;
    let mut dropped = 0u64;
    loop {
        if shared.finished.load(Ordering::SeqCst) {
            return None;
        }
        match lines.next_event() {
            Event::Line(l) => {
                let Some(body) = conn.open(&l, seq) else {
                    dropped += 1;
                    if dropped == 1 {
                        tracing::warn!(
                            "peer watch: a line from node {} failed authentication and was dropped",
                            conn.rank
                        );
                    }
                    continue;
                };
                seq += 1;
                *conn.last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                let words: Vec<&str> = body.split(' ').collect();
                match words[..] {
                    ["exit", code] => match code.parse::<i32>() {
                        Ok(0) => conn.clean_exit.store(true, Ordering::SeqCst),
                        Ok(c) => {
                            return Some(PeerStop {
                                node: conn.rank,
                                failure: PeerFailure::Failed { exit_code: c },
                            });
                        }
                        Err(_) => {}
                    },
                    ["stop", ref rest @ ..] if conn.rank == 0 => {
                        if let Some(s) = PeerStop::parse_wire(rest) {
                            return Some(s);
                        }
                    }
                    _ => {}
                }
            }
            Event::Idle | Event::TooLong => {}
            Event::Closed => {
                return (!conn.clean_exit.load(Ordering::SeqCst)
                    && !shared.finished.load(Ordering::SeqCst))
                .then_some(PeerStop {
                    node: conn.rank,
                    failure: PeerFailure::Gone,
                });
            }
        }
    }
}

enum Event {
    Line(String),
    /// Nothing to read for a moment.
    Idle,
    /// A line longer than [`MAX_LINE`]: dropped, up to its newline.
    TooLong,
    Closed,
}

/// Lines from a socket, read with a bound: never more than [`MAX_LINE`] plus one read buffered.
struct LineReader {
    stream: TcpStream,
    buf: Vec<u8>,
    discarding: bool,
}

const POLL: Duration = Duration::from_millis(100);

impl LineReader {
    fn new(stream: TcpStream) -> LineReader {
        let _ = stream.set_read_timeout(Some(POLL));
        LineReader {
            stream,
            buf: Vec::with_capacity(MAX_LINE + 1024),
            discarding: false,
        }
    }

    fn next_event(&mut self) -> Event {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if std::mem::take(&mut self.discarding) {
                    continue;
                }
                let line = &line[..line.len() - 1];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                return match std::str::from_utf8(line) {
                    Ok(s) if s.is_ascii() => Event::Line(s.to_string()),
                    _ => Event::Line(String::new()),
                };
            }
            if self.discarding {
                self.buf.clear();
            } else if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.discarding = true;
                return Event::TooLong;
            }
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Event::Closed,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    // No whole line yet: back to the caller, whose deadline runs by the clock
                    // however the bytes trickle in.
                    if memchr::memchr(b'\n', &self.buf).is_none() && self.buf.len() <= MAX_LINE {
                        if self.discarding {
                            self.buf.clear();
                        }
                        return Event::Idle;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Event::Idle;
                }
                Err(_) => return Event::Closed,
            }
        }
    }

    /// A whole line before `deadline` (by the clock, however the bytes trickle in), or `None`
    /// (late, too long, closed).
    fn line_before(&mut self, deadline: Instant) -> Option<String> {
        while Instant::now() < deadline {
            match self.next_event() {
                Event::Line(l) => return Some(l),
                Event::Idle => {}
                Event::TooLong | Event::Closed => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_ports_stay_clear_of_rendezvous_ports() {
        assert_eq!(watch_port(20_000), 10_000);
        assert_eq!(watch_port(28_999), 18_999);
        assert_eq!(watch_port(29_400), 19_400);
        assert_eq!(watch_port(5_000), 15_000);
        assert_eq!(watch_port(65_535), 55_535);
    }

    #[test]
    fn stop_causes_survive_the_wire() {
        for failure in [
            PeerFailure::Failed { exit_code: -3 },
            PeerFailure::Gone,
            PeerFailure::Lost { silent_s: 31 },
        ] {
            let s = PeerStop { node: 3, failure };
            let wire = s.wire();
            let words: Vec<&str> = wire.split(' ').collect();
            assert_eq!(PeerStop::parse_wire(&words[1..]), Some(s));
        }
    }

    #[test]
    fn printable_escapes_control_bytes_and_bounds_length() {
        assert_eq!(printable(b"a\x1b[31mb\n", 100), "a\\x1b[31mb\\n");
        assert_eq!(printable(&[b'x'; 10], 4), "xxxx...");
    }
}
