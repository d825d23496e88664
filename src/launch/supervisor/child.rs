//! Starting torchrun: straight into the run's cgroup where the kernel allows it
//! (`launch::spawn`), else forked and moved in before exec; either way one [`Torchrun`] to wait on.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{ExitStatus, Stdio};

use crate::launch::command::LaunchCommand;
use crate::launch::process_tree::{MARKER_VAR, RunCgroup};
use crate::launch::spawn::{self, PidfdChild, SpawnError};

/// torchrun, however it was started.
pub(super) struct Torchrun {
    pub pid: i32,
    /// Its stdout and stderr, until the relay takes them.
    pub pipes: [Option<OwnedFd>; 2],
    exit: Exit,
}

enum Exit {
    Pidfd(PidfdChild),
    Tokio(tokio::process::Child),
}

impl Torchrun {
    /// Its exit status. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match &mut self.exit {
            Exit::Pidfd(child) => child.wait().await,
            Exit::Tokio(child) => child.wait().await,
        }
    }
}

/// What torchrun's environment leaves out: the peer watch's job secret is the launcher's alone
/// (issue 25 item 9).
const REMOVED: &[&str] = &[crate::cluster::peers::SECRET_ENV];

pub(super) fn spawn(
    cmd: &LaunchCommand,
    marker: &str,
    cgroup: Option<&RunCgroup>,
) -> io::Result<Torchrun> {
    let parent = std::process::id() as i32;
    if let Some(dir) = cgroup.and_then(|c| c.open().ok()) {
        let set = cmd
            .env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .chain([(MARKER_VAR.into(), marker.into())]);
        let request = spawn::Request {
            program: &cmd.program,
            args: &cmd.args,
            env: spawn::child_env(set, REMOVED),
            cwd: &cmd.cwd,
            cgroup: dir.as_fd(),
            parent,
        };
        match spawn::into_cgroup(&request) {
            Ok(started) => {
                return Ok(Torchrun {
                    pid: started.pid,
                    pipes: [Some(started.stdout), Some(started.stderr)],
                    exit: Exit::Pidfd(started.exit),
                });
            }
            Err(SpawnError::Failed(e)) => return Err(e),
            Err(SpawnError::Unsupported(e)) => {
                tracing::debug!("clone3 into the run's cgroup refused ({e}): fork, then move");
            }
        }
    }
    fork_then_move(cmd, marker, cgroup, parent)
}

/// The usual way: fork, move into the cgroup (a kernel lock that waits for an RCU grace
/// period), exec.
fn fork_then_move(
    cmd: &LaunchCommand,
    marker: &str,
    cgroup: Option<&RunCgroup>,
    parent: i32,
) -> io::Result<Torchrun> {
    let mut command = tokio::process::Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .env(MARKER_VAR, marker)
        .current_dir(&cmd.cwd)
        // Own group: the terminal's signals come through us. No stdin: a background group
        // reading the terminal would be stopped by SIGTTIN.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in REMOVED {
        command.env_remove(name);
    }
    let cgroup = cgroup.map(|c| c.enter_fn());
    // SAFETY: only async-signal-safe syscalls (open/write/close, prctl, getppid) run between
    // fork and exec, and no allocation (errors are raw errnos).
    unsafe {
        command.pre_exec(move || {
            // Into the run's cgroup before anything can fork: the caller checks it worked.
            if let Some(enter) = &cgroup {
                let _ = enter.enter();
            }
            spawn::tie_to_parent(parent).map_err(io::Error::from_raw_os_error)
        });
    }
    let mut child = command.spawn()?;
    let pipes = [
        child.stdout.take().map(|p| p.into_owned_fd()).transpose()?,
        child.stderr.take().map(|p| p.into_owned_fd()).transpose()?,
    ];
    Ok(Torchrun {
        pid: child.id().map_or(0, |p| p as i32),
        pipes,
        exit: Exit::Tokio(child),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::command::{AllocConf, AllocConfSource};
    use std::io::Read;

    fn command(script: &str) -> LaunchCommand {
        LaunchCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("VLA_CHILD_TEST".into(), "set".into())],
            cwd: std::env::temp_dir(),
            alloc_conf: AllocConf {
                value: String::new(),
                source: AllocConfSource::Launcher,
            },
        }
    }

    async fn output(mut child: Torchrun) -> (String, Option<i32>) {
        let mut text = String::new();
        std::fs::File::from(child.pipes[0].take().unwrap())
            .read_to_string(&mut text)
            .unwrap();
        (text, child.wait().await.unwrap().code())
    }

    const SCRIPT: &str =
        "grep '^0::' /proc/self/cgroup; echo \"$VLA_CHILD_TEST $VLA_LAUNCH_RUN\"; exit 4";

    /// Both ways of starting torchrun give the same child: in the cgroup from the start, with
    /// the command's environment and the run's marker.
    #[tokio::test]
    async fn either_way_torchrun_starts_in_the_run_cgroup_with_its_environment() {
        // Led by our pid, as the launcher's markers are: a group a failed test leaves behind is
        // removed by the next launcher once this process is gone.
        let marker = format!("{}-child-test", std::process::id());
        let Ok(cg) = RunCgroup::create(&marker) else {
            eprintln!("skipped: no run cgroup here");
            return;
        };
        let name = cg.dir().file_name().unwrap().to_string_lossy().into_owned();
        let parent = std::process::id() as i32;
        let cmd = command(SCRIPT);
        for (way, child) in [
            ("clone3", spawn(&cmd, &marker, Some(&cg)).unwrap()),
            (
                "fork then move",
                fork_then_move(&cmd, &marker, Some(&cg), parent).unwrap(),
            ),
        ] {
            let (text, code) = output(child).await;
            assert_eq!(code, Some(4), "{way}: {text}");
            let (cgroup, env) = text.split_once('\n').unwrap();
            assert!(cgroup.ends_with(&name), "{way}: {text}");
            assert_eq!(env, format!("set {marker}\n"), "{way}");
        }
        // Without a cgroup: forked, nothing to move into.
        let (text, code) = output(spawn(&cmd, &marker, None).unwrap()).await;
        assert_eq!(code, Some(4));
        assert!(!text.lines().next().unwrap().ends_with(&name), "{text}");
    }
}
