//! The floor of any relay that keeps a log beside the copy, for `scripts/bench-relay.sh`
//! (`TWICE=1`): `relay_floor SECOND_FILE < stream > copy` reads up to 256 KiB at a time (the
//! launcher's read size) and writes each read to stdout and to SECOND_FILE, with no other work
//! (no records, no timestamps, no progress, no runtime). Its stdin pipe is enlarged to 1 MiB as
//! the launcher enlarges torchrun's pipes.
//!
//! `relay_floor --threads SECOND_FILE < stream > copy` reads and writes the second file as above
//! while a thread writes the copy (a bounded queue: the reader waits when the writer lags, nothing
//! is dropped), so the two page-cache writes can run on two cores.
//!
//! `relay_floor --splice SECOND_FILE < stream > copy` moves the bytes without ever copying them
//! into this process: `tee(2)` duplicates what waits in the stdin pipe into a second pipe (page
//! references, no copy), and `splice(2)` moves each pipe into its file. What is left is the
//! kernel's own work of putting the bytes into two files' page cache: the floor of a relay that
//! keeps a log, whatever it does in user space.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const CHUNK: usize = 256 * 1024;
const PIPE_SIZE: libc::c_int = 1 << 20;

fn main() {
    let mut args: Vec<_> = std::env::args_os().skip(1).collect();
    let zero_copy = args.first().is_some_and(|a| a == "--splice");
    let threads = args.first().is_some_and(|a| a == "--threads");
    if zero_copy || threads {
        args.remove(0);
    }
    let [second] = args.as_slice() else {
        eprintln!("usage: relay_floor [--splice | --threads] SECOND_FILE < stream > copy");
        std::process::exit(2);
    };
    let second = File::create(second).expect("the second file");
    // SAFETY: fcntl on fd 0 with an integer argument; a non-pipe stdin only makes it fail.
    unsafe { libc::fcntl(0, libc::F_SETPIPE_SZ, PIPE_SIZE) };
    if zero_copy {
        splice_both(&second)
            .expect("tee/splice (stdin a pipe, stdout a file not opened to append)");
    } else if threads {
        two_threads(second);
    } else {
        read_and_write(second);
    }
}

fn read_and_write(mut second: File) {
    let mut input = io::stdin().lock();
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        };
        out.write_all(&buf[..n]).expect("the copy");
        second.write_all(&buf[..n]).expect("the second file");
    }
}

/// Reads and writes the second file here; a thread writes the copy (a bounded queue: the reader
/// waits when the writer lags, nothing is dropped).
fn two_threads(mut second: File) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = std::thread::spawn(move || {
        let mut out = io::stdout().lock();
        for buf in rx {
            out.write_all(&buf).expect("the copy");
            let _ = back_tx.send(buf);
        }
    });
    let mut input = io::stdin().lock();
    loop {
        let mut buf = back_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
        buf.resize(CHUNK, 0);
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        };
        buf.truncate(n);
        second.write_all(&buf).expect("the second file");
        tx.send(buf).expect("the writer");
    }
    drop(tx);
    writer.join().expect("the writer");
}

fn splice_both(second: &File) -> io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned here alone.
    let (side_out, side_in) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl with an integer argument.
    unsafe { libc::fcntl(side_in.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    loop {
        // SAFETY: tee between two pipe fds; no memory is passed.
        let n = unsafe { libc::tee(0, side_in.as_raw_fd(), CHUNK, 0) };
        match n {
            0 => return Ok(()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            n => {
                let n = n as usize;
                move_all(0, 1, n)?;
                move_all(side_out.as_raw_fd(), second.as_raw_fd(), n)?;
            }
        }
    }
}

/// Splices exactly `n` bytes from the pipe `from` into `to`.
fn move_all(from: RawFd, to: RawFd, mut n: usize) -> io::Result<()> {
    while n > 0 {
        // SAFETY: splice from a pipe fd to a file fd, null offsets (the files' own positions).
        let m = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), n, 0) };
        match m {
            m if m > 0 => n -= m as usize,
            0 => return Err(io::Error::other("splice moved nothing")),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
