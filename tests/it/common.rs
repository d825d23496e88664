//! Helpers shared by the integration tests: model specs, the planner policy, the fake torchrun.
//! Take these rather than writing another literal.

use std::path::{Path, PathBuf};

use vla_launch::budget::{Allocator, FsdpVersion, Strategy};
use vla_launch::model::{ActionHead, Dtype, ModelSpec, Platform};
use vla_launch::plan::Policy;
use vla_launch::profile::{self, BUILTIN};
use vla_launch::units::GIB;

/// The model spec of a built-in profile (as `--profile NAME` plans it).
pub fn builtin_spec(name: &str) -> ModelSpec {
    let text = BUILTIN.iter().find(|(n, _)| *n == name).unwrap().1;
    profile::model_spec(
        &profile::parse(text, name).unwrap(),
        &profile::ScriptArgs::default(),
    )
}

/// The planner policy of the shipped profiles: global batch at least 16, DDP or FSDP, a script
/// that takes both planner flags, a 5% / 1 GiB margin, batch up to 64, expandable segments.
/// Tests change what they exercise: `Policy { min_global_batch: 8, ..policy() }`.
pub fn policy() -> Policy {
    Policy {
        min_global_batch: 16,
        exact_global_batch: false,
        strategies: vec![Strategy::Ddp, Strategy::Fsdp],
        script_accepts_fsdp: true,
        script_accepts_checkpointing: true,
        margin_fraction: 0.05,
        margin_min_bytes: GIB,
        max_batch_size: 64,
        allocator: Allocator::ExpandableSegments,
        fsdp: FsdpVersion::Fsdp1,
        fsdp_unavailable: None,
        fsdp_by_addition: false,
    }
}

/// The stand-in for torchrun (tests/fixtures/fake_torchrun; its header lists what it can do).
pub fn fake_torchrun() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_torchrun")
}

/// The measured layouts: ALOHA (3 images, FiLM, proprio) or LIBERO (2 images, proprio), LoRA r=32,
/// a 23-token prompt (ALOHA 1144 tokens, LIBERO 594).
pub fn spec(platform: Platform, lora_dtype: Dtype) -> ModelSpec {
    let aloha = platform == Platform::Aloha;
    ModelSpec {
        preset: "openvla-7b".into(),
        num_images: if aloha { 3 } else { 2 },
        use_film: aloha,
        use_proprio: true,
        action_head: ActionHead::L1Regression,
        num_diffusion_steps_train: 50,
        action_chunk: platform.action_chunk(),
        action_dim: platform.action_dim(),
        proprio_dim: platform.proprio_dim(),
        lora_rank: 32,
        lora_dtype,
        prompt_tokens: 23,
        // The probes behind these layouts' figures drew one instruction for every sample.
        padded_batches: false,
    }
}

/// Removes the variables through which the machine running the tests would leak into a
/// launcher's plan: described GPUs, visible devices, and a Slurm or torchrun topology.
pub trait WithoutAmbient {
    fn without_ambient_topology(&mut self) -> &mut Self;
}

impl WithoutAmbient for std::process::Command {
    fn without_ambient_topology(&mut self) -> &mut Self {
        for var in [
            "VLA_LAUNCH_GPUS",
            "CUDA_VISIBLE_DEVICES",
            "SLURM_JOB_ID",
            "SLURM_NNODES",
            "SLURM_RESTART_COUNT",
            "MASTER_ADDR",
            "NNODES",
            "NODE_RANK",
        ] {
            self.env_remove(var);
        }
        self
    }
}

/// The vla-launch binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_vla-launch");

/// The test process's PATH with the directory of the interpreter that `python3` runs put first,
/// when the `python3` found on PATH is not that interpreter but a dispatcher such as pyenv's shim
/// (a bash script that starts some 18 processes to pick a version: about 90 ms of CPU per start,
/// against about 10 ms for the interpreter itself, for the same Python). The suite starts Python
/// a few hundred times (the fake torchrun, the scripts' `--help`, the torch stand-ins), so the
/// shim was a third of its CPU time. Elsewhere (CI, a venv) PATH is returned unchanged. Every
/// run through [`Vla`] gets this PATH unless the test sets its own; a test that builds a PATH
/// for a child should start from this one.
pub fn path() -> &'static std::ffi::OsStr {
    static PATH: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        match interpreter_dir_behind_a_dispatcher(&inherited) {
            Some(dir) => {
                let mut dirs = vec![dir];
                dirs.extend(std::env::split_paths(&inherited));
                std::env::join_paths(dirs).unwrap_or(inherited)
            }
            None => inherited,
        }
    })
}

/// The directory of the interpreter `python3` runs, when the first `python3` on `path` is
/// elsewhere (a shim); None when it is the interpreter itself or when there is no Python.
fn interpreter_dir_behind_a_dispatcher(path: &std::ffi::OsStr) -> Option<PathBuf> {
    let found = std::env::split_paths(path)
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.is_file())?;
    let out = std::process::Command::new(&found)
        .args(["-c", "import sys; print(sys.executable)"])
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let executable = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim_end());
    let dir = executable.parent()?.to_path_buf();
    let real = |p: &Path| std::fs::canonicalize(p).ok();
    let interpreter = real(&executable)?;
    let direct = out.status.success()
        && real(&dir.join("python3")).as_ref() == Some(&interpreter)
        && real(&found).as_ref() != Some(&interpreter);
    direct.then_some(dir)
}

/// The one way the integration tests run the CLI: state the arguments, environment, working
/// directory and stdin, then `run()` it for its code, stdout and stderr (checked with `Ran`'s
/// expectations or read directly), `output()` for the raw bytes, or `command()` for a run that
/// must be spawned and signalled. The environment is inherited unless a test changes it; each
/// test file states its own (`without_ambient_topology`, profile and cache directories, ...).
pub struct Vla {
    cmd: std::process::Command,
    stdin: Option<Vec<u8>>,
}

impl Default for Vla {
    fn default() -> Self {
        Self::new()
    }
}

impl Vla {
    /// The binary cargo built for these tests.
    pub fn new() -> Self {
        Self::at(BIN)
    }

    /// A copy or link of the binary at another path (e.g. an installed layout).
    pub fn at(exe: impl AsRef<std::ffi::OsStr>) -> Self {
        let mut cmd = std::process::Command::new(exe);
        cmd.env("PATH", path());
        Self { cmd, stdin: None }
    }

    pub fn arg(&mut self, arg: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(
        &mut self,
        key: impl AsRef<std::ffi::OsStr>,
        val: impl AsRef<std::ffi::OsStr>,
    ) -> &mut Self {
        self.cmd.env(key, val);
        self
    }

    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        self.cmd.envs(vars);
        self
    }

    pub fn env_remove(&mut self, key: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.cmd.env_remove(key);
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Bytes written to the child's stdin (closed after them); without this stdin is empty.
    pub fn stdin(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// The configured command, for runs spawned in the background and signalled.
    pub fn command(&mut self) -> &mut std::process::Command {
        &mut self.cmd
    }

    /// The configured command, owned (for helpers that hand out a command to spawn).
    pub fn into_command(self) -> std::process::Command {
        self.cmd
    }

    /// Runs it to the end and returns its exit status and the bytes it wrote (as
    /// `Command::output`, so that a test may look at the error of a start that failed).
    pub fn output(&mut self) -> std::io::Result<std::process::Output> {
        use std::io::Write;
        use std::process::Stdio;
        let Some(input) = &self.stdin else {
            return self.cmd.output();
        };
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut pipe = child.stdin.take().unwrap();
        let input = input.clone();
        // Written from a thread so that a child that writes before it reads cannot deadlock.
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        let out = child.wait_with_output();
        writer.join().unwrap();
        out
    }

    /// Runs it to the end; stdout and stderr as (lossy) text.
    pub fn run(&mut self) -> Ran {
        Ran::from(self.output().expect("vla-launch runs"))
    }
}

impl WithoutAmbient for Vla {
    fn without_ambient_topology(&mut self) -> &mut Self {
        self.cmd.without_ambient_topology();
        self
    }
}

/// What a run of the CLI left: exit code, stdout and stderr as text (`output()` has the bytes).
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Ran {
    fn from(output: std::process::Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Ran {
    /// Expects exit code `want`, naming stderr when it differs.
    pub fn code(self, want: i32) -> Self {
        assert_eq!(self.code, Some(want), "stderr: {}", self.stderr);
        self
    }

    pub fn success(self) -> Self {
        self.code(0)
    }

    /// Expects every needle in stdout, naming stdout when one is missing.
    pub fn stdout_has(self, needles: &[&str]) -> Self {
        for n in needles {
            assert!(
                self.stdout.contains(n),
                "{n:?} not in stdout:\n{}",
                self.stdout
            );
        }
        self
    }

    /// Expects every needle in stderr, naming stderr when one is missing.
    pub fn stderr_has(self, needles: &[&str]) -> Self {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "{n:?} not in stderr:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// The harness itself: stdin reaches the child whole and is closed after it (no test of the CLI
/// feeds stdin yet, so `cat` stands in), and the code and output come back.
#[test]
fn harness_feeds_stdin_and_returns_code_and_output() {
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let out = Vla::at("cat").stdin(input.clone()).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, input);
    Vla::at("sh")
        .args(["-c", "echo out; echo err >&2; exit 3"])
        .run()
        .code(3)
        .stdout_has(&["out"])
        .stderr_has(&["err"]);
}

/// Keeps the harness the one way in: no other test file names the binary cargo built (a file that
/// needs its path, e.g. to put it on a script's PATH, takes `BIN`).
#[test]
fn only_the_harness_names_the_built_binary() {
    let needle = concat!("CARGO_BIN", "_EXE_");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let mut offenders = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "common.rs")
            && std::fs::read_to_string(&path).unwrap().contains(needle)
        {
            offenders.push(path.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "run the CLI through common::Vla (or take common::BIN): {offenders:?}"
    );
}

/// The harness's PATH skips only a dispatcher: `python3` through it is the very interpreter that
/// `python3` through the test process's own PATH runs (same executable, same version).
#[test]
fn the_harness_path_runs_the_same_python() {
    let which = |path: &std::ffi::OsStr| {
        let out = std::process::Command::new("python3")
            .env("PATH", path)
            .args([
                "-c",
                "import sys; print(sys.executable); print(sys.version)",
            ])
            .output();
        out.ok().filter(|o| o.status.success()).map(|o| {
            let text = String::from_utf8(o.stdout).unwrap();
            let (exe, version) = text.split_once('\n').unwrap();
            (std::fs::canonicalize(exe).unwrap(), version.to_string())
        })
    };
    let own = std::env::var_os("PATH").unwrap_or_default();
    assert_eq!(which(path()), which(&own));
}

/// xorshift64*: small, seeded and deterministic, so a failing generated case names its seed (the
/// fuzz and injection tests' one generator).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An index 0..n.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.index(xs.len())]
    }
}

/// main's launch record (tests/fixtures/records/main-f32ef0c-run-plan-1795850263.json, written in
/// another checkout) moved to this one: its paths into tests/fixtures point here.
pub fn main_launch_record() -> serde_json::Value {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text =
        std::fs::read_to_string(fixtures.join("records/main-f32ef0c-run-plan-1795850263.json"))
            .unwrap()
            .replace(
                "/work/wt/structure/tests/fixtures/",
                &format!("{}/", fixtures.display()),
            );
    serde_json::from_str(&text).unwrap()
}
