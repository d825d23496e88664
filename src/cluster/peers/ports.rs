//! Ports and names node 0 needs: taken ports, node names that do not resolve.

use std::io;
use std::net::{TcpListener, ToSocketAddrs};

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
pub(super) fn is_local(addr: std::net::IpAddr) -> bool {
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
