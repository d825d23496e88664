//! The peer watch's wire protocol written again from its description (src/cluster/peers/mod.rs
//! module header), for tests that play one side by hand: a node with the secret, a forger
//! without it, a stand-in node 0.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn hmac(key: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p.as_bytes());
    }
    m.finalize().into_bytes().to_vec()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn mac(key: &[u8], parts: &[&str]) -> String {
    hex(&hmac(key, parts))
}

/// One side of an authenticated connection.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    key: Vec<u8>,
    out_dir: &'static str,
    in_dir: &'static str,
    pub seq_out: u64,
    seq_in: u64,
    partial: String,
}

impl Client {
    pub fn send(&mut self, body: &str) -> std::io::Result<()> {
        let seq = self.seq_out.to_string();
        let m = mac(&self.key, &[self.out_dir, &seq, body]);
        self.seq_out += 1;
        self.stream
            .write_all(format!("{seq} {body} {m}\n").as_bytes())
    }

    /// The next authenticated body if one comes within the read timeout (`None` otherwise);
    /// a line cut by the timeout is kept for the next call.
    pub fn recv_ready(&mut self) -> Option<String> {
        let mut l = std::mem::take(&mut self.partial);
        match self.reader.read_line(&mut l) {
            Ok(_) if l.ends_with('\n') => {}
            _ => {
                self.partial = l;
                return None;
            }
        }
        self.check(&l)
    }

    fn check(&mut self, l: &str) -> Option<String> {
        let l = l.trim_end();
        let (rest, m) = l.rsplit_once(' ')?;
        let (s, body) = rest.split_once(' ')?;
        if s != self.seq_in.to_string() || mac(&self.key, &[self.in_dir, s, body]) != m {
            return None;
        }
        self.seq_in += 1;
        Some(body.to_string())
    }

    /// The next authenticated body (`None`: closed, or a line that fails).
    pub fn recv(&mut self) -> Option<String> {
        let mut l = String::new();
        if self.reader.read_line(&mut l).ok()? == 0 {
            return None;
        }
        self.check(&l)
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut l = String::new();
    (r.read_line(&mut l).ok()? > 0).then(|| l.trim_end().to_string())
}

/// Connects to node 0 at `port` as node `rank` of `job` with `secret`: `Err` with what went
/// wrong when node 0 does not welcome it.
pub fn connect_as(port: u16, secret: &str, job: &str, rank: &str) -> Result<Client, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let ch = read_line(&mut reader).ok_or("no challenge")?;
    let nonce0 = ch
        .strip_prefix("challenge ")
        .ok_or("not a challenge")?
        .to_string();
    let nonce_n = hex(&[7u8; 16]);
    let m = mac(secret.as_bytes(), &["hello", job, rank, &nonce0, &nonce_n]);
    let mut s = stream.try_clone().unwrap();
    s.write_all(format!("hello {job} {rank} {nonce_n} {m}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let w = read_line(&mut reader).ok_or("closed instead of welcome")?;
    let expect = mac(
        secret.as_bytes(),
        &["welcome", job, rank, &nonce0, &nonce_n],
    );
    if w != format!("welcome {expect}") {
        return Err(format!("bad welcome {w}"));
    }
    let key = hmac(
        secret.as_bytes(),
        &["session", job, rank, &nonce0, &nonce_n],
    );
    Ok(Client {
        stream,
        reader,
        key,
        out_dir: "to-hub",
        in_dir: "to-node",
        seq_out: 0,
        seq_in: 0,
        partial: String::new(),
    })
}

/// A stand-in node 0: accepts one connection on `listener` and authenticates it.
pub fn accept_as_hub(listener: &TcpListener, secret: &str, job: &str) -> Client {
    let (stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let nonce0 = hex(&[9u8; 16]);
    let mut s = stream.try_clone().unwrap();
    s.write_all(format!("challenge {nonce0}\n").as_bytes())
        .unwrap();
    let hello = read_line(&mut reader).unwrap();
    let w: Vec<&str> = hello.split(' ').collect();
    assert_eq!((w[0], w[1]), ("hello", job), "{hello}");
    let (rank, nonce_n) = (w[2], w[3]);
    assert_eq!(
        w[4],
        mac(secret.as_bytes(), &["hello", job, rank, &nonce0, nonce_n])
    );
    let welcome = mac(secret.as_bytes(), &["welcome", job, rank, &nonce0, nonce_n]);
    s.write_all(format!("welcome {welcome}\n").as_bytes())
        .unwrap();
    let key = hmac(secret.as_bytes(), &["session", job, rank, &nonce0, nonce_n]);
    Client {
        stream,
        reader,
        key,
        out_dir: "to-node",
        in_dir: "to-hub",
        seq_out: 0,
        seq_in: 0,
        partial: String::new(),
    }
}
