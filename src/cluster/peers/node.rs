//! Node n: the connection to node 0, its handshake and reconnects.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{hub::*, secret::*, shared::*, wire::*};

/// Node n's side of the handshake on a fresh connection to node 0.
pub(super) fn handshake_peer(
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
pub(super) fn peer_loop(target: &str, shared: Arc<Shared>) {
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

pub(super) fn target_of(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub(super) fn connect(target: &str, timeout: Duration) -> Option<TcpStream> {
    let addr = target.to_socket_addrs().ok()?.next()?;
    TcpStream::connect_timeout(&addr, timeout).ok()
}
