//! Starting torchrun inside the run's cgroup from its first instruction, without moving it there.
//!
//! Moving a process into a cgroup (writing its pid to `cgroup.procs`, what the fork-then-move
//! way does between fork and exec) takes the kernel's cgroup lock for writing, which waits for an
//! RCU grace period: 7.5 ms on an idle 2-core VM, 10-25 ms on a loaded one, and torchrun's start
//! waited for it every run. `clone3(CLONE_INTO_CGROUP)` (Linux 5.7) creates the process in the
//! cgroup instead, at the cost of a fork (0.5 ms). Everything the child needs is prepared here
//! before the clone; between clone and exec the child makes only async-signal-safe system calls
//! on that prepared memory, as `std::process::Command` does after its fork.
//!
//! The child gets what the supervisor's `Command` gave it: the argv and environment, the working
//! directory, its own process group, stdin from /dev/null, stdout and stderr to two new pipes,
//! an empty signal mask and SIGPIPE at its default, PR_SET_PDEATHSIG=SIGTERM (and no start if
//! the launcher is already gone). The program is looked up in the child's PATH, and a file the
//! kernel cannot execute (a script without `#!`) handed to /bin/sh, as `execvp` does. Where the
//! kernel, a seccomp filter or the cgroup's permissions refuse the clone,
//! [`SpawnError::Unsupported`] tells the caller to start it the usual way.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::sys::stat::Mode;
use nix::unistd::pipe2;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const P_PIDFD: libc::idtype_t = 3;
const SH: &std::ffi::CStr = c"/bin/sh";
/// execvp's search path when PATH is not set.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// `struct clone_args` (linux/sched.h), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What to start, resolved by the caller.
pub(crate) struct Request<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    /// The whole environment of the child.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: &'a Path,
    /// The cgroup's directory, opened.
    pub cgroup: BorrowedFd<'a>,
    /// The launcher's pid: the child does not start if its parent is no longer this one.
    pub parent: i32,
}

#[derive(Debug)]
pub(crate) enum SpawnError {
    /// The clone was refused (kernel before 5.7, a seccomp filter, the cgroup's permissions):
    /// no process was made; start it the usual way.
    Unsupported(io::Error),
    /// The process could not be started (not found, not executable, no such directory): the same
    /// error the usual way would give.
    Failed(io::Error),
}

/// A started child: its pid, its pidfd (to wait on), and the read ends of its stdout and stderr.
pub(crate) struct Started {
    pub pid: i32,
    pub exit: PidfdChild,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Everything the child touches between clone and exec, allocated before the clone.
struct Prepared {
    /// The paths to try, in PATH order (one when the program names a path).
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

impl Prepared {
    fn new(req: &Request) -> io::Result<Prepared> {
        // The error names where the NUL is, never the value (it may be a secret).
        let c = |s: &OsStr, place: &dyn Fn() -> String| {
            CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a NUL byte in {}", place()),
                )
            })
        };
        let path = req
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let candidates = candidates(req.program, path)
            .iter()
            .map(|p| c(p.as_os_str(), &|| "the program's path".into()))
            .collect::<io::Result<_>>()?;
        let mut argv = vec![c(req.program.as_os_str(), &|| "the program's path".into())?];
        for (i, a) in req.args.iter().enumerate() {
            argv.push(c(a, &|| format!("argument {}", i + 1))?);
        }
        let envp = req
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                c(&kv, &|| {
                    format!("the environment variable {}", k.to_string_lossy())
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Prepared {
            candidates,
            argv,
            envp,
            cwd: c(req.cwd.as_os_str(), &|| "the working directory".into())?,
        })
    }
}

/// Where `execvp` would look for `program`, in order: itself when it names a path (has a `/`),
/// else each PATH entry joined with it (an empty entry is the working directory).
fn candidates(program: &Path, path: Option<&OsStr>) -> Vec<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return vec![program.to_path_buf()];
    }
    let path = path.unwrap_or(OsStr::new(DEFAULT_PATH));
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
            Path::new(OsStr::from_bytes(dir)).join(program)
        })
        .collect()
}

/// The environment the child gets: the launcher's, with `set` applied in order (a later value
/// wins) and `remove` taken out.
pub(crate) fn child_env(
    set: impl IntoIterator<Item = (OsString, OsString)>,
    remove: &[&str],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (k, v) in set {
        match env.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        }
    }
    env.retain(|(k, _)| !remove.iter().any(|r| k == r));
    env
}

/// Starts the process inside the cgroup (see the module comment).
pub(crate) fn into_cgroup(req: &Request) -> Result<Started, SpawnError> {
    let prep = Prepared::new(req).map_err(SpawnError::Failed)?;
    let fail = SpawnError::Failed;
    // All above 2, so that no dup2 below lands on a descriptor another one still needs.
    let null = null_high().map_err(fail)?;
    let (out_read, out_write) = pipe_high().map_err(fail)?;
    let (err_read, err_write) = pipe_high().map_err(fail)?;
    let (report_read, report_write) = pipe_high().map_err(fail)?;
    let child_fds = ChildFds {
        stdin: null.as_raw_fd(),
        stdout: out_write.as_raw_fd(),
        stderr: err_write.as_raw_fd(),
        report: report_write.as_raw_fd(),
    };
    let mut argv: Vec<*const libc::c_char> = prep.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prep.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // For a file without `#!`: `/bin/sh FILE ARGS...`, FILE filled in by the child.
    let mut sh_argv = vec![SH.as_ptr(), std::ptr::null()];
    sh_argv.extend_from_slice(&argv[1..]);
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &raw mut pidfd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: req.cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child has its own copy of this memory and
    // one thread, and runs `exec_child`, which only makes async-signal-safe calls on the
    // prepared buffers and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe { exec_child(&prep, &argv, &mut sh_argv, &envp, child_fds, req.parent) }
    }
    if pid < 0 {
        return Err(SpawnError::Unsupported(io::Error::last_os_error()));
    }
    // SAFETY: the kernel wrote a new pidfd for the child into `pidfd`; it is ours alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((null, out_write, err_write, report_write));
    if let Some(errno) = read_report(report_read) {
        // It exits at once: reaped here, so that no zombie is left.
        let _ = reap(pidfd.as_fd(), 0);
        return Err(SpawnError::Failed(io::Error::from_raw_os_error(errno)));
    }
    let pid = pid as i32;
    match PidfdChild::new(pidfd) {
        Ok(exit) => Ok(Started {
            pid,
            exit,
            stdout: out_read,
            stderr: err_read,
        }),
        Err(e) => {
            // Running, but nothing could wait for it: it must not run unsupervised.
            // SAFETY: our own child, not yet reaped, so the pid is still its.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            Err(SpawnError::Failed(e))
        }
    }
}

#[derive(Clone, Copy)]
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// Close-on-exec: a successful exec closes it; a failure writes its errno there.
    report: RawFd,
}

/// The child's side, between clone and exec: sets up and execs, or reports the errno and exits.
///
/// # Safety
/// Only in the child of a clone without CLONE_VM, with `argv`, `sh_argv` (its second slot
/// free) and `envp` null-terminated arrays of pointers into `prep`.
unsafe fn exec_child(
    prep: &Prepared,
    argv: &[*const libc::c_char],
    sh_argv: &mut [*const libc::c_char],
    envp: &[*const libc::c_char],
    fds: ChildFds,
    parent: i32,
) -> ! {
    // SAFETY (the whole body): async-signal-safe calls on memory prepared before the clone.
    unsafe {
        let errno = 'fail: {
            for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
                if libc::dup2(from, to) < 0 {
                    break 'fail errno();
                }
            }
            if libc::setpgid(0, 0) != 0 || libc::chdir(prep.cwd.as_ptr()) != 0 {
                break 'fail errno();
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0
                || libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR
            {
                break 'fail errno();
            }
            if let Err(e) = tie_to_parent(parent) {
                break 'fail e;
            }
            // As execvp: a path that is not there moves on to the next; EACCES is kept, so that
            // it is reported if nothing else runs; any other error stops the search.
            let mut seen_eacces = false;
            let mut last = libc::ENOENT;
            for candidate in &prep.candidates {
                libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr());
                last = errno();
                if last == libc::ENOEXEC {
                    sh_argv[1] = candidate.as_ptr();
                    libc::execve(SH.as_ptr(), sh_argv.as_ptr(), envp.as_ptr());
                    break 'fail last;
                }
                match last {
                    libc::EACCES => seen_eacces = true,
                    libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP => {}
                    _ => break 'fail last,
                }
            }
            if seen_eacces { libc::EACCES } else { last }
        };
        let bytes = errno.to_ne_bytes();
        libc::write(fds.report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// PR_SET_PDEATHSIG=SIGTERM for the calling child, and ESRCH if its parent is no longer
/// `parent` (the launcher died before prctl took effect). Async-signal-safe, for between fork
/// and exec.
pub(crate) fn tie_to_parent(parent: i32) -> Result<(), i32> {
    // SAFETY: prctl with integer arguments, getppid.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
            return Err(errno());
        }
        if libc::getppid() != parent {
            return Err(libc::ESRCH);
        }
    }
    Ok(())
}

fn errno() -> i32 {
    Errno::last_raw()
}

/// The errno the child reported, or `None` once its exec closed the pipe (end of file first).
fn read_report(fd: OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 4];
    match io::Read::read_exact(&mut std::fs::File::from(fd), &mut buf) {
        Ok(()) => Some(i32::from_ne_bytes(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
        Err(e) => Some(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// `/dev/null` for reading, close-on-exec, on a descriptor above 2.
fn null_high() -> io::Result<OwnedFd> {
    high(open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// A close-on-exec pipe (read end, write end), both above 2.
fn pipe_high() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
    Ok((high(r)?, high(w)?))
}

/// `fd` itself when above 2, else a close-on-exec duplicate that is (a launcher started with
/// a closed stdin would otherwise get a pipe on 0, which the child's dup2 onto 0 would clobber).
fn high(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let new = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC made a new fd that is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A child waited for through its pidfd, which becomes readable when it exits.
pub(crate) struct PidfdChild {
    fd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl PidfdChild {
    fn new(pidfd: OwnedFd) -> io::Result<PidfdChild> {
        // SAFETY: the pidfd stays open, and its number the same, as long as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(PidfdChild { fd, status: None })
    }

    /// Its exit status, reaping it. Cancel-safe: a status once reaped is kept.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let mut ready = self.fd.readable().await?;
            match reap(self.fd.get_ref().as_fd(), libc::WNOHANG)? {
                Some(status) => self.status = Some(status),
                None => ready.clear_ready(),
            }
        }
    }
}

/// `waitid(P_PIDFD)`: the status once the process has exited (`None` with WNOHANG before).
fn reap(pidfd: BorrowedFd, options: libc::c_int) -> io::Result<Option<ExitStatus>> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on a pidfd we hold, into a local siginfo_t.
        let r = unsafe {
            libc::waitid(
                P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | options,
            )
        };
        if r != 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        // SAFETY: filled by waitid for a child that changed state (si_pid 0: none yet).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(wait_status(info.si_code, status)));
    }
}

/// The `ExitStatus` of a waitid result: `si_code` says how it ended, `si_status` with what.
fn wait_status(code: libc::c_int, status: libc::c_int) -> ExitStatus {
    let raw = match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        _ => status & 0x7f,
    };
    ExitStatus::from_raw(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::process_tree::RunCgroup;
    use std::io::Read;

    #[test]
    fn the_program_is_looked_up_as_execvp_does() {
        let path = Some(OsStr::new("/a:/b/c::/d"));
        assert_eq!(
            candidates(Path::new("torchrun"), path),
            ["/a/torchrun", "/b/c/torchrun", "./torchrun", "/d/torchrun"].map(PathBuf::from)
        );
        // A name with a slash is taken as it is, relative to the working directory.
        assert_eq!(
            candidates(Path::new("bin/x"), path),
            [PathBuf::from("bin/x")]
        );
        assert_eq!(
            candidates(Path::new("/opt/x"), None),
            [PathBuf::from("/opt/x")]
        );
        assert_eq!(
            candidates(Path::new("x"), None),
            [PathBuf::from("/bin/x"), PathBuf::from("/usr/bin/x")]
        );
    }

    #[test]
    fn exit_statuses_read_as_waitpid_gives_them() {
        let exited = wait_status(libc::CLD_EXITED, 3);
        assert_eq!((exited.code(), exited.signal()), (Some(3), None));
        let killed = wait_status(libc::CLD_KILLED, libc::SIGKILL);
        assert_eq!(
            (killed.code(), killed.signal()),
            (None, Some(libc::SIGKILL))
        );
        let dumped = wait_status(libc::CLD_DUMPED, libc::SIGSEGV);
        assert_eq!(dumped.signal(), Some(libc::SIGSEGV));
        assert!(dumped.core_dumped());
    }

    #[test]
    fn the_environment_is_the_launchers_with_changes() {
        let set = [
            ("VLA_SPAWN_TEST_A".into(), "1".into()),
            ("VLA_SPAWN_TEST_A".into(), "2".into()),
            ("PATH".into(), "/only".into()),
        ];
        let env = child_env(set, &["HOME"]);
        let get = |k: &str| -> Vec<OsString> {
            env.iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(get("VLA_SPAWN_TEST_A"), ["2"]);
        assert_eq!(get("PATH"), ["/only"]);
        assert!(get("HOME").is_empty());
        if let Some(user) = std::env::var_os("USER") {
            assert_eq!(get("USER"), [user]);
        }
    }

    /// A run cgroup, where this machine lets us make one (cgroup v2, root or a delegated
    /// subtree); the tests that need one say so and pass without it.
    fn cgroup(name: &str) -> Option<RunCgroup> {
        // Led by our pid: a group a failed test leaves is removed by the next launcher.
        let made = RunCgroup::create(&format!("{}-spawn-test-{name}", std::process::id()));
        if let Err(e) = &made {
            eprintln!("skipped: no run cgroup here ({e})");
        }
        made.ok()
    }

    fn start(
        cg: &RunCgroup,
        program: &str,
        args: &[&str],
        cwd: &Path,
    ) -> Result<Started, SpawnError> {
        let dir = cg.open().unwrap();
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let request = Request {
            program: Path::new(program),
            args: &args,
            env: child_env(
                [
                    ("VLA_SPAWN_TEST".into(), "set".into()),
                    ("VLA_SPAWN_GONE".into(), "x".into()),
                ],
                &["VLA_SPAWN_GONE"],
            ),
            cwd,
            cgroup: dir.as_fd(),
            parent: std::process::id() as i32,
        };
        into_cgroup(&request)
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        text
    }

    #[tokio::test]
    async fn the_child_runs_in_the_cgroup_as_the_supervisors_command_set_it_up() {
        let Some(cg) = cgroup("setup") else { return };
        let cwd = std::env::temp_dir();
        let script = "cat /proc/self/cgroup; pwd; echo \"var=$VLA_SPAWN_TEST gone=${VLA_SPAWN_GONE-unset}\"; \
                      readlink /proc/self/fd/0; grep -E '^(SigBlk|SigIgn)' /proc/self/status; \
                      echo \"pgid=$(cut -d' ' -f5 /proc/self/stat) pid=$$\"; echo err >&2; exit 7";
        let mut started = match start(&cg, "sh", &["-c", script], &cwd) {
            Ok(started) => started,
            Err(SpawnError::Unsupported(e)) => return eprintln!("skipped: clone3 refused ({e})"),
            Err(SpawnError::Failed(e)) => panic!("{e}"),
        };
        let out = read_all(started.stdout.try_clone().unwrap());
        let err = read_all(started.stderr.try_clone().unwrap());
        let status = started.exit.wait().await.unwrap();
        assert_eq!(status.code(), Some(7), "{out}");
        assert_eq!(err, "err\n");
        let name = cg.dir().file_name().unwrap().to_str().unwrap();
        assert!(
            out.lines()
                .any(|l| l.starts_with("0::") && l.ends_with(name)),
            "{out}"
        );
        assert!(out.contains(&format!("\n{}\n", cwd.display())), "{out}");
        assert!(out.contains("var=set gone=unset"), "{out}");
        assert!(out.contains("/dev/null"), "{out}");
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        let ignored = out
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:\t"))
            .unwrap();
        let ignored = u64::from_str_radix(ignored, 16).unwrap();
        assert_eq!(
            ignored & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE ignored: {out}"
        );
        // sh's `cut` runs in a subshell: the group is the shell's, which is its own.
        let line = out.lines().find(|l| l.starts_with("pgid=")).unwrap();
        let (pgid, pid) = line.split_once(' ').unwrap();
        assert_eq!(
            pgid.trim_start_matches("pgid="),
            pid.trim_start_matches("pid="),
            "{out}"
        );
        assert_eq!(pid.trim_start_matches("pid="), started.pid.to_string());
    }

    #[test]
    fn a_nul_byte_is_named_by_where_it_is_never_by_its_value() {
        let dir = std::fs::File::open("/").unwrap();
        let args = [OsString::from("ok"), OsString::from("hunter2\0secret")];
        let request = Request {
            program: Path::new("true"),
            args: &args,
            env: vec![("TOKEN".into(), "abc\0def".into())],
            cwd: Path::new("/"),
            cgroup: dir.as_fd(),
            parent: std::process::id() as i32,
        };
        let Err(SpawnError::Failed(e)) = into_cgroup(&request) else {
            panic!("started")
        };
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "a NUL byte in argument 2");
        let request = Request {
            args: &[],
            ..request
        };
        let Err(SpawnError::Failed(e)) = into_cgroup(&request) else {
            panic!("started")
        };
        assert_eq!(
            e.to_string(),
            "a NUL byte in the environment variable TOKEN"
        );
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_an_error_and_leaves_no_child() {
        let Some(cg) = cgroup("fail") else { return };
        let cwd = std::env::temp_dir();
        match start(&cg, "true", &[], &cwd) {
            Ok(mut started) => assert!(started.exit.wait().await.unwrap().success()),
            Err(SpawnError::Unsupported(e)) => return eprintln!("skipped: clone3 refused ({e})"),
            Err(SpawnError::Failed(e)) => panic!("{e}"),
        }
        let kind = |r: Result<Started, SpawnError>| match r {
            Err(SpawnError::Failed(e)) => e.kind(),
            Err(SpawnError::Unsupported(e)) => panic!("clone3 refused: {e}"),
            Ok(_) => panic!("started"),
        };
        assert_eq!(
            kind(start(&cg, "vla-no-such-program", &[], &cwd)),
            io::ErrorKind::NotFound
        );
        let tmp = tempfile::tempdir().unwrap();
        let not_executable = tmp.path().join("data");
        std::fs::write(&not_executable, "echo no\n").unwrap();
        let program = not_executable.to_str().unwrap();
        assert_eq!(
            kind(start(&cg, program, &[], &cwd)),
            io::ErrorKind::PermissionDenied
        );
        let gone = Path::new("/nonexistent-vla-dir");
        assert_eq!(
            kind(start(&cg, "sh", &["-c", "true"], gone)),
            io::ErrorKind::NotFound
        );
        // A file the kernel cannot run goes to /bin/sh, as with execvp.
        let script = tmp.path().join("no-shebang");
        std::fs::write(&script, "echo \"from sh: $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let Ok(mut started) = start(&cg, script.to_str().unwrap(), &["arg"], &cwd) else {
            panic!("a script without #! did not start")
        };
        assert_eq!(
            read_all(started.stdout.try_clone().unwrap()),
            "from sh: arg\n"
        );
        assert_eq!(started.exit.wait().await.unwrap().code(), Some(0));
        // Each failed child was reaped at once: the cgroup is empty, no zombie is left in it.
        assert!(crate::launch::process_tree::cgroup_procs(cg.dir()).is_empty());
    }
}
