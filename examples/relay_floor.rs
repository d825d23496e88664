//! The floor of any relay that keeps a log beside the copy, for `scripts/bench-relay.sh`
//! (`TWICE=1`): `relay_floor SECOND_FILE < stream > copy` reads up to 256 KiB at a time (the
//! launcher's read size) and writes each read to stdout and to SECOND_FILE, with no other work
//! (no records, no timestamps, no progress, no runtime). Its stdin pipe is enlarged to 1 MiB as
//! the launcher enlarges torchrun's pipes.

use std::io::{Read, Write};

fn main() {
    let Some(second) = std::env::args_os().nth(1) else {
        eprintln!("usage: relay_floor SECOND_FILE < stream > copy");
        std::process::exit(2);
    };
    let mut second = std::fs::File::create(second).expect("the second file");
    // SAFETY: fcntl on fd 0 with an integer argument; a non-pipe stdin only makes it fail.
    unsafe { libc::fcntl(0, libc::F_SETPIPE_SZ, 1 << 20) };
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        };
        out.write_all(&buf[..n]).expect("the copy");
        second.write_all(&buf[..n]).expect("the second file");
    }
}
