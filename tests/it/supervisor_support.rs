//! Shared helpers for the supervisor tests: a fake torchrun command, a run on a thread, and
//! checks on the processes it started.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vla_launch::cluster::Topology;
use vla_launch::launch::command::{CommandSpec, Inherited, LaunchCommand, build};
use vla_launch::launch::supervisor::{
    LaunchError, Outcome, SignalHandle, Sink, SuperviseOptions, run_blocking,
};

pub fn fake_torchrun() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_torchrun")
}

pub struct Fixture {
    pub dir: TempDir,
    pub cmd: LaunchCommand,
}

impl Fixture {
    /// A command for the fake torchrun, with the FAKE_* behaviour variables in `fake_env`.
    pub fn new(fake_env: &[(&str, &str)]) -> Fixture {
        Fixture::with_spec(fake_env, |_| {})
    }

    pub fn with_spec(fake_env: &[(&str, &str)], edit: impl FnOnce(&mut CommandSpec)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = CommandSpec {
            torchrun: fake_torchrun(),
            script: "vla-scripts/finetune.py".into(),
            workdir: dir.path().to_path_buf(),
            nproc_per_node: 1,
            topology: Topology::single_node(),
            max_restarts: 0,
            script_flags: vec![],
            extra_args: vec![],
            env: vec![],
            cuda_visible_devices: Some("GPU-test".into()),
            vram_cap_bytes: None,
            ranks_filter: None,
            torchrun_log_dir: None,
        };
        edit(&mut spec);
        let mut cmd = build(&spec, &Inherited::from_process()).unwrap();
        let pids = dir.path().join("pids");
        cmd.env
            .push(("FAKE_PIDS".into(), pids.to_string_lossy().into()));
        for (k, v) in fake_env {
            cmd.env.push((k.to_string(), v.to_string()));
        }
        Fixture { dir, cmd }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Options with output to files in the fixture's directory and the given grace.
    pub fn options(&self, grace: Duration) -> SuperviseOptions {
        let mut o = SuperviseOptions::new(self.path("run.log"));
        o.grace = grace;
        o.orphan_grace = Duration::from_millis(300);
        o.leak_timeout = Duration::from_millis(500);
        o.stdout = Sink::File(self.path("stdout"));
        o.stderr = Sink::File(self.path("stderr"));
        o.forward_process_signals = false;
        // Tests run in parallel in one process: its other children are other tests' runs.
        o.adopt_orphans = false;
        o
    }

    pub fn run(&self, grace: Duration) -> Outcome {
        run_blocking(&self.cmd, &self.options(grace)).unwrap()
    }

    /// Starts the run on its own thread; signals go through the returned handle.
    pub fn start(
        &self,
        opts: SuperviseOptions,
    ) -> (SignalHandle, JoinHandle<Result<Outcome, LaunchError>>) {
        let handle = opts.signals.clone();
        let cmd = self.cmd.clone();
        (
            handle,
            std::thread::spawn(move || run_blocking(&cmd, &opts)),
        )
    }

    /// Waits until the fake has started all its processes; returns their pids.
    pub fn wait_ready(&self) -> Vec<i32> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(self.path("pids")).unwrap_or_default();
            if text.lines().any(|l| l == "ready") {
                return pids_in(&text);
            }
            assert!(Instant::now() < until, "fake torchrun never became ready");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        pids_in(&std::fs::read_to_string(self.path("pids")).unwrap_or_default())
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

fn pids_in(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.parse().ok()).collect()
}

/// Alive means present and not a zombie (a zombie holds no memory, GPU or otherwise).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
            state != Some('Z') && state != Some('X')
        }
        Err(_) => false,
    }
}

pub fn assert_all_dead(pids: &[i32], context: &str) {
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "{context}: still alive: {left:?}");
}
