//! The running watch: starting node 0's hub or node n's connection, finishing.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{config::*, hub::*, node::*, secret::*, shared::*, stop::*, wire::*};

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
    pub(super) shared: Arc<Shared>,
    /// Node 0: the port it listens on.
    pub(super) port: Option<u16>,
    /// Node 0: the accept loop, joined by `finish` so the port is free again afterwards.
    pub(super) acceptor: Option<JoinHandle<()>>,
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
    pub(super) fn peer_later(
        w: &NodeWatch,
        loader: SecretLoader,
        on_stop: OnStop,
    ) -> io::Result<PeerWatch> {
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

    pub(super) fn spawn_peer(self) -> io::Result<PeerWatch> {
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

    pub(super) fn new(
        job: WatchJob,
        node_rank: u32,
        target: Option<String>,
        on_stop: OnStop,
    ) -> PeerWatch {
        let w = PeerWatch::unkeyed(&job.id, job.nnodes, job.timing, node_rank, target, on_stop);
        let _ = w.shared.secret.set(job.secret);
        w
    }

    pub(super) fn unkeyed(
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
                pending: Mutex::new(Pending::default()),
                refusals: AtomicUsize::new(0),
            }),
        }
    }

    /// The nodes this watch has authenticated with so far: on node 0 the other nodes (in the
    /// order they joined), on node n `[0]` once it is connected to node 0.
    pub fn joined(&self) -> Vec<u32> {
        if self.shared.node_rank == 0 {
            self.shared
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        } else if self.shared.conns().is_empty() {
            Vec::new()
        } else {
            vec![0]
        }
    }

    /// This node's torchrun ended with `exit_code`: tell the other side(s) and close.
    pub fn finish(self, exit_code: i32) {
        self.finish_reporting(exit_code, exit_code);
    }

    /// [`PeerWatch::finish`] with torchrun's own exit code beside the launcher's status
    /// (`exit_code`, which decides the other nodes' exits): the others name torchrun's where the
    /// two differ (issue 25 item 14: "exited with 3", not the launcher's 1).
    pub fn finish_reporting(mut self, exit_code: i32, torchrun_exit: i32) {
        let exit_line = if torchrun_exit == exit_code || exit_code == 0 {
            format!("exit {exit_code}")
        } else {
            format!("exit {exit_code} {torchrun_exit}")
        };
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
                        let _ = conn.send(&exit_line);
                        conn.shutdown();
                    }
                }
            }
        }
        for c in conns {
            let _ = c.send(&exit_line);
            c.shutdown();
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}
