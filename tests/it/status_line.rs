//! Issue 26 item 1: the run's status line on a real pty of 60, 80 and 120 columns. The launcher
//! runs the fake torchrun's tqdm updates, is sent SIGINT once its status line is up, and the
//! bytes it wrote are played on a small terminal model of that width. Failed before the status
//! line was width-aware (it wrapped at 60 and 80 columns, every update then starting a new line)
//! and before the launcher's own messages went around it (the SIGINT warning was appended to it).

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{Vla, WithoutAmbient};

/// What a terminal of `width` columns shows after `bytes`, and whether any printed character
/// had to wrap to the next line. Knows what the launcher writes: text, `\r`, `\n`, backspace,
/// and the CSI sequences for erasing and moving the cursor; colours and others are skipped.
struct Screen {
    width: usize,
    rows: Vec<Vec<char>>,
    row: usize,
    col: usize,
    wrapped: Vec<String>,
}

impl Screen {
    fn new(width: usize) -> Self {
        Screen {
            width,
            rows: vec![Vec::new()],
            row: 0,
            col: 0,
            wrapped: Vec::new(),
        }
    }

    fn line(&mut self) -> &mut Vec<char> {
        while self.rows.len() <= self.row {
            self.rows.push(Vec::new());
        }
        &mut self.rows[self.row]
    }

    fn put(&mut self, c: char) {
        if self.col >= self.width {
            // The cursor stood past the last column: this character goes on the next line.
            let text: String = self.line().iter().collect();
            self.wrapped.push(text);
            self.row += 1;
            self.col = 0;
        }
        let col = self.col;
        let line = self.line();
        if line.len() <= col {
            line.resize(col + 1, ' ');
        }
        line[col] = c;
        self.col += 1;
    }

    fn play(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => self.col = 0,
                '\n' => self.row += 1,
                '\u{8}' => self.col = self.col.saturating_sub(1),
                '\u{1b}' => {
                    if chars.peek() != Some(&'[') {
                        chars.next();
                        continue;
                    }
                    chars.next();
                    let mut param = String::new();
                    let mut fin = None;
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            fin = Some(c);
                            break;
                        }
                        param.push(c);
                    }
                    let n: usize = param.parse().unwrap_or(1).max(1);
                    let col = self.col.min(self.width);
                    match fin {
                        Some('K') if param == "2" => self.line().clear(),
                        Some('K') if param.is_empty() || param == "0" => self.line().truncate(col),
                        Some('A') => self.row = self.row.saturating_sub(n),
                        Some('B') => self.row += n,
                        Some('C') => self.col = (self.col + n).min(self.width - 1),
                        Some('D') => self.col = self.col.saturating_sub(n),
                        Some('G') => self.col = n - 1,
                        _ => {}
                    }
                }
                c if c.is_control() => {}
                c => self.put(c),
            }
        }
    }

    fn lines(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| r.iter().collect::<String>().trim_end().to_string())
            .collect()
    }
}

fn launch_on_pty(width: u16, dir: &Path) -> Vec<u8> {
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    // openpty's fds are inheritable: a launcher holding the master would never see the end.
    for fd in [pty.master.as_raw_fd(), pty.slave.as_raw_fd()] {
        // SAFETY: fcntl flags on fds we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let slave: OwnedFd = pty.slave;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Vla::new();
    cmd.without_ambient_topology()
        .args(["--profile", "aloha", "--gpus", "1xh100", "--log-dir"])
        .arg(dir.join("logs"))
        .arg("--torchrun")
        .arg(root.join("tests/fixtures/fake_torchrun"))
        .current_dir(root)
        .env("OPENVLA_OFT_DIR", root.join("tests/fixtures/openvla-oft"))
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", dir)
        .env("WANDB_MODE", "offline")
        .env_remove("PYTORCH_CUDA_ALLOC_CONF")
        .env("RUST_LOG", "vla_launch=warn")
        .env("NO_COLOR", "1")
        .env("TERM", "xterm")
        // Long enough to be stopped: 50 updates a second, an ETA of hours.
        .env("FAKE_TQDM", "1000000")
        .env("FAKE_TQDM_DELAY", "0.02")
        .env("FAKE_ON_STOP_PRINT", "the script stops")
        .command()
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let mut child = cmd.command().spawn().unwrap();
    drop(cmd);
    // Drain the terminal as an emulator would; the channel says when the status line is up.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the launcher and everything holding the terminal is gone.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(all.clone());
        }
        all
    });
    let shows_status = |seen: &[u8]| String::from_utf8_lossy(seen).contains("vla-launch: step ");
    let mut up = false;
    while let Ok(seen) = rx.recv_timeout(Duration::from_secs(60)) {
        if shows_status(&seen) {
            up = true;
            break;
        }
    }
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let all = reader.join().unwrap();
    assert!(
        up,
        "{width} columns: no status line within 60 s:\n{}",
        String::from_utf8_lossy(&all)
    );
    assert!(!status.success(), "{}", String::from_utf8_lossy(&all));
    all
}

#[test]
fn status_line_fits_the_terminal_and_gets_out_of_the_way() {
    for width in [60u16, 80, 120] {
        let dir = tempfile::tempdir().unwrap();
        let bytes = launch_on_pty(width, dir.path());
        let mut screen = Screen::new(usize::from(width));
        screen.play(&bytes);
        let lines = screen.lines();
        let shown = lines.join("\n");
        // No status-line update wrapped (the launcher's long command line may, as any text).
        let wrapped: Vec<&String> = screen
            .wrapped
            .iter()
            .filter(|l| l.contains("vla-launch: step "))
            .collect();
        assert!(
            wrapped.is_empty(),
            "{width} columns: status lines wrapped: {wrapped:?}\n{shown}"
        );
        // The warning of the stop starts a line of its own.
        let warning = lines
            .iter()
            .find(|l| l.contains("SIGINT: stopping torchrun"))
            .unwrap_or_else(|| panic!("{width} columns: no SIGINT warning:\n{shown}"));
        assert!(
            warning.trim_start().starts_with("WARN"),
            "{width} columns: the warning shares its line: {warning:?}\n{shown}"
        );
        // The script's output after it, and the launcher's last lines, each on its own line.
        assert!(
            lines.iter().any(|l| l == "the script stops"),
            "{width} columns:\n{shown}"
        );
        // Gone after the run, and nothing of it left on the rows of the run (an update that
        // started a new row would leave the one before behind).
        let run_rows = lines
            .iter()
            .rposition(|l| l.starts_with("vla-launch: cd "))
            .map_or(&lines[..], |i| &lines[i..]);
        for fragment in ["vla-launch: step ", "samples/s", "GiB predicted"] {
            assert!(
                !run_rows.iter().any(|l| l.contains(fragment)),
                "{width} columns: {fragment:?} is still on the terminal:\n{shown}"
            );
        }
        let raw = String::from_utf8_lossy(&bytes);
        assert!(raw.contains("vla-launch: step "), "{raw:?}");
    }
}
