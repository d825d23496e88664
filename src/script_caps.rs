//! Which flags the training script accepts, read from its `--help`.
//!
//! Upstream OpenVLA-OFT's finetune.py has no `--use_fsdp` / `--gradient_checkpointing`, the
//! user's fork has both; the planner must only pass what the script defines, and draccus (like
//! argparse) prints every field in `--help`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The flags a script defines, without leading dashes (`batch_size`, `use_fsdp`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptCaps {
    pub flags: BTreeSet<String>,
}

impl ScriptCaps {
    /// `accepts("use_fsdp")` and `accepts("--use_fsdp")` are the same question.
    pub fn accepts(&self, flag: &str) -> bool {
        self.flags.contains(flag.trim_start_matches('-'))
    }
}

/// The long option name at the start of `token` (`--batch_size`, `--lr=LR`, `[--x`), if any.
fn long_flag(token: &str) -> Option<String> {
    let t = token.trim_start_matches('[');
    let name = t.strip_prefix("--")?;
    let name: String = name
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    (!name.is_empty() && name.starts_with(|c: char| c.is_ascii_alphanumeric())).then_some(name)
}

/// Extract the long flags that a draccus or argparse `--help` lists: from the usage block and
/// from option lines (`  --batch_size int   ...`, `  -f FOO, --foo FOO  ...`). Flags that
/// only appear inside descriptions are not taken.
pub fn parse_help(help_text: &str) -> ScriptCaps {
    let mut flags = BTreeSet::new();
    let mut in_usage = false;
    for line in help_text.lines() {
        let trimmed = line.trim_start();
        if trimmed.to_ascii_lowercase().starts_with("usage:") {
            in_usage = true;
        } else if trimmed.is_empty() {
            in_usage = false;
        }
        if in_usage {
            // `[--batch_size int]`, `[--use_fsdp bool]`, `(--a | --b)`
            flags.extend(
                trimmed
                    .split(|c: char| c.is_whitespace() || matches!(c, '(' | '|'))
                    .filter_map(long_flag),
            );
            continue;
        }
        if !trimmed.starts_with('-') {
            continue;
        }
        // The invocation part ends where the description starts (two spaces), or at the end
        // of the line when the description wraps onto the next one.
        let invocation = trimmed.split("  ").next().unwrap_or(trimmed);
        for part in invocation.split(", ") {
            if let Some(flag) = part.split_whitespace().next().and_then(long_flag) {
                flags.insert(flag);
            }
        }
    }
    ScriptCaps { flags }
}

/// What a finished command printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// None when a signal ended it.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {} s and was killed", timeout.as_secs())]
    Timeout { program: PathBuf, timeout: Duration },
}

/// Runs a program with arguments (never through a shell): the seam tests replace.
pub trait CommandRunner {
    fn run(
        &self,
        program: &Path,
        args: &[&OsStr],
        workdir: Option<&Path>,
        timeout: Duration,
    ) -> Result<Captured, RunError>;
}

/// The real runner: spawns the process in its own process group and kills the group on timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

/// Output beyond this is dropped; a `--help` is a few KiB.
const CAPTURE_LIMIT: usize = 4 << 20;

/// Spawns `cmd`, retrying ETXTBSY: a just-written executable can be briefly held open by
/// another thread's fork; it clears within milliseconds.
fn spawn(cmd: &mut Command, program: &Path) -> Result<std::process::Child, RunError> {
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 10 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => {
                return other.map_err(|source| RunError::Spawn {
                    program: program.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Reads the child's stdout and stderr on threads of their own (up to `CAPTURE_LIMIT` each);
/// each arrives whole as (is stdout, bytes), and the channel closes when both are read.
fn read_pipes(child: &mut std::process::Child) -> mpsc::Receiver<(bool, Vec<u8>)> {
    let (tx, rx) = mpsc::channel();
    let pipes = [
        (
            true,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            false,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ];
    for (is_stdout, pipe) in pipes {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(CAPTURE_LIMIT as u64).read_to_end(&mut buf);
            }
            let _ = tx.send((is_stdout, buf));
        });
    }
    rx
}

impl CommandRunner for SystemRunner {
    fn run(
        &self,
        program: &Path,
        args: &[&OsStr],
        workdir: Option<&Path>,
        timeout: Duration,
    ) -> Result<Captured, RunError> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = workdir {
            cmd.current_dir(dir);
        }
        let mut child = spawn(&mut cmd, program)?;
        let rx = read_pipes(&mut child);
        // Wait for the output and the exit together: the pipes reach EOF as the process exits,
        // so waking on them (instead of polling the exit every 10 ms) returns within a
        // millisecond of a fast `--help`. A grandchild that outlives the process may hold the
        // pipes open: after the exit, take what arrived within a second rather than wait for it.
        let deadline = Instant::now() + timeout;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut pipes_open = true;
        let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
        let status = loop {
            if exited.is_none() {
                match child.try_wait() {
                    Ok(Some(status)) => exited = Some((status, Instant::now())),
                    Ok(None) if Instant::now() >= deadline => {
                        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                        let _ = child.wait();
                        return Err(RunError::Timeout {
                            program: program.to_path_buf(),
                            timeout,
                        });
                    }
                    Ok(None) => {}
                    Err(source) => {
                        return Err(RunError::Spawn {
                            program: program.to_path_buf(),
                            source,
                        });
                    }
                }
            }
            if let Some((status, at)) = exited {
                if !pipes_open || at.elapsed() >= Duration::from_secs(1) {
                    break status;
                }
            }
            if pipes_open {
                match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok((true, b)) => stdout = b,
                    Ok((false, b)) => stderr = b,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => pipes_open = false,
                }
            } else {
                // Output complete, the process not reaped yet (or it closed its output and
                // carries on): poll the exit.
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        Ok(Captured {
            exit_code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptCapsError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(
        "`{python} {script} --help` exited with {exit} and listed no flags; its output ends with: {tail}\nfix: run it by hand in the training environment and install what it lacks"
    )]
    HelpFailed {
        python: PathBuf,
        script: PathBuf,
        exit: String,
        tail: String,
    },
    #[error(
        "`{python} {script} --help` printed no --flags; is {script} a draccus/argparse training script?"
    )]
    NoFlags { python: PathBuf, script: PathBuf },
}

/// Default time allowed for `--help`: importing torch, transformers and TensorFlow cold can
/// take tens of seconds on a network file system.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// Run `python SCRIPT --help` in `workdir` and read the flags it lists.
#[cfg(test)]
pub fn probe(
    python: &Path,
    script: &Path,
    workdir: &Path,
    timeout: Duration,
) -> Result<ScriptCaps, ScriptCapsError> {
    probe_with(&SystemRunner, python, script, workdir, timeout)
}

/// `probe` through a given runner (tests pass a fake).
pub fn probe_with(
    runner: &dyn CommandRunner,
    python: &Path,
    script: &Path,
    workdir: &Path,
    timeout: Duration,
) -> Result<ScriptCaps, ScriptCapsError> {
    let out = runner.run(
        python,
        &[script.as_os_str(), OsStr::new("--help")],
        Some(workdir),
        timeout,
    )?;
    // argparse prints help on stdout; some wrappers print it on stderr.
    let caps = parse_help(&format!("{}\n{}", out.stdout, out.stderr));
    if out.exit_code == Some(0) && !caps.flags.is_empty() {
        return Ok(caps);
    }
    if out.exit_code != Some(0) {
        let all = format!("{}{}", out.stdout, out.stderr);
        let tail: String = all
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(ScriptCapsError::HelpFailed {
            python: python.to_path_buf(),
            script: script.to_path_buf(),
            exit: out
                .exit_code
                .map_or_else(|| "a signal".to_string(), |c| format!("code {c}")),
            tail,
        });
    }
    Err(ScriptCapsError::NoFlags {
        python: python.to_path_buf(),
        script: script.to_path_buf(),
    })
}

/// The one fake `CommandRunner` of the unit tests (doctor's and this module's).
#[cfg(test)]
pub(crate) mod fake {
    use std::cell::RefCell;
    use std::ffi::{OsStr, OsString};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::{Captured, CommandRunner, RunError};

    /// Answers the torch probe (`python -c ...`) with `torch` and anything else (the script's
    /// `--help`) with `help`; a missing answer fails with `error`, else with a timeout. Records
    /// every call as (program, args, workdir).
    #[derive(Default)]
    pub(crate) struct FakeRunner {
        pub torch: Option<Captured>,
        pub help: Option<Captured>,
        pub error: Option<fn() -> RunError>,
        pub calls: RefCell<Vec<Call>>,
    }

    /// One recorded run: program, arguments, working directory.
    pub(crate) type Call = (PathBuf, Vec<OsString>, Option<PathBuf>);

    impl CommandRunner for FakeRunner {
        fn run(
            &self,
            program: &Path,
            args: &[&OsStr],
            workdir: Option<&Path>,
            timeout: Duration,
        ) -> Result<Captured, RunError> {
            self.calls.borrow_mut().push((
                program.into(),
                args.iter().map(|a| a.to_os_string()).collect(),
                workdir.map(Path::to_path_buf),
            ));
            let out = if args.first() == Some(&OsStr::new("-c")) {
                &self.torch
            } else {
                &self.help
            };
            out.clone().ok_or_else(|| match self.error {
                Some(f) => f(),
                None => RunError::Timeout {
                    program: program.into(),
                    timeout,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    /// What draccus prints for OpenVLA-OFT's FinetuneConfig (abridged), with the user's fork
    /// adding use_fsdp and gradient_checkpointing.
    const DRACCUS_HELP: &str = "\
usage: finetune.py [-h] [--config_path str] [--vla_path str]
                   [--data_root_dir Path] [--dataset_name str]
                   [--run_root_dir Path] [--shuffle_buffer_size int]
                   [--use_l1_regression bool] [--use_diffusion bool]
                   [--num_diffusion_steps_train int] [--use_film bool]
                   [--num_images_in_input int] [--use_proprio bool]
                   [--batch_size int] [--learning_rate float]
                   [--lr_warmup_steps int] [--num_steps_before_decay int]
                   [--grad_accumulation_steps int] [--max_steps int]
                   [--use_fsdp bool] [--gradient_checkpointing bool]
                   [--lora_rank int] [--wandb_entity str]

options:
  -h, --help            show this help message and exit
  --config_path str     Path for a config file to parse with draccus (default:
                        None)

FinetuneConfig:

  --vla_path str        Path to OpenVLA model (on HuggingFace Hub or stored
                        locally) (default: openvla/openvla-7b)
  --data_root_dir Path  Directory containing RLDS datasets (default:
                        datasets/rlds)
  --use_l1_regression bool
                        If True, trains continuous action head with L1
                        regression objective (default: True)
  --batch_size int      Batch size per device (total batch size = batch_size *
                        num GPUs) (default: 8)
  --grad_accumulation_steps int
                        Number of gradient accumulation steps (default: 1)
  --use_fsdp bool       Shard with FSDP instead of DDP; see also --fsdp_offload in
                        the README (default: False)
  --gradient_checkpointing bool
                        Recompute activations in backward (default: False)
  --lora_rank int       Rank of LoRA weight matrix (default: 32)
";

    #[test]
    fn draccus_help_lists_every_field() {
        let caps = parse_help(DRACCUS_HELP);
        for f in [
            "help",
            "config_path",
            "vla_path",
            "data_root_dir",
            "shuffle_buffer_size",
            "use_film",
            "batch_size",
            "grad_accumulation_steps",
            "use_fsdp",
            "gradient_checkpointing",
            "lora_rank",
            "wandb_entity",
        ] {
            assert!(caps.accepts(f), "{f} missing from {:?}", caps.flags);
        }
        assert!(caps.accepts("--use_fsdp"));
        // Only mentioned in a description, never defined.
        assert!(!caps.accepts("fsdp_offload"), "{:?}", caps.flags);
        assert_eq!(caps.flags.len(), 23, "{:?}", caps.flags);
    }

    #[test]
    fn upstream_help_lacks_the_fork_flags() {
        let upstream: String = DRACCUS_HELP
            .lines()
            .filter(|l| {
                !l.contains("use_fsdp")
                    && !l.contains("gradient_checkpointing")
                    && !l.contains("Recompute")
                    && !l.contains("the README")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let caps = parse_help(&upstream);
        assert!(caps.accepts("batch_size") && caps.accepts("grad_accumulation_steps"));
        assert!(!caps.accepts("use_fsdp") && !caps.accepts("gradient_checkpointing"));
    }

    #[test]
    fn argparse_styles() {
        let help = "\
usage: train.py [-h] [--lr LR] [-b BATCH_SIZE] [--mode {ddp,fsdp}]
                [--bf16 | --no-bf16] [--nested.opt.beta2 F]
                data_dir

positional arguments:
  data_dir              where the data is

options:
  -h, --help            show this help message and exit
  --lr LR, --learning-rate LR
                        learning rate
  -b BATCH_SIZE, --batch-size BATCH_SIZE
                        per-GPU batch
  --mode {ddp,fsdp}     strategy
  --bf16, --no-bf16     use bfloat16 (default: True)
  --warmup=STEPS        warmup steps
  --nested.opt.beta2 F  nested dataclass field
  - a bullet in an epilog, not a flag
  -- also not a flag
";
        let caps = parse_help(help);
        let want: BTreeSet<String> = [
            "help",
            "lr",
            "learning-rate",
            "batch-size",
            "mode",
            "bf16",
            "no-bf16",
            "warmup",
            "nested.opt.beta2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(caps.flags, want);
        assert!(parse_help("").flags.is_empty());
        assert!(
            parse_help("Traceback (most recent call last):\nImportError: x\n")
                .flags
                .is_empty()
        );
    }

    fn probe_fake(out: Result<Captured, fn() -> RunError>) -> Result<ScriptCaps, ScriptCapsError> {
        let runner = fake::FakeRunner {
            help: out.as_ref().ok().cloned(),
            error: out.err(),
            ..Default::default()
        };
        let result = probe_with(
            &runner,
            Path::new("/env/bin/python"),
            Path::new("vla-scripts/finetune.py"),
            Path::new("/src/openvla-oft"),
            Duration::from_secs(5),
        );
        // Python runs the script with --help, in the workdir.
        let calls = runner.calls.borrow();
        assert_eq!(calls.len(), 1);
        let (program, args, workdir) = &calls[0];
        assert_eq!(program, Path::new("/env/bin/python"));
        assert_eq!(
            args,
            &[
                OsString::from("vla-scripts/finetune.py"),
                OsString::from("--help")
            ]
        );
        assert_eq!(workdir.as_deref(), Some(Path::new("/src/openvla-oft")));
        result
    }

    fn captured(
        code: Option<i32>,
        stdout: &str,
        stderr: &str,
    ) -> Result<Captured, fn() -> RunError> {
        Ok(Captured {
            exit_code: code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        })
    }

    #[test]
    fn probe_reads_help_and_reports_failures() {
        assert!(
            probe_fake(captured(Some(0), DRACCUS_HELP, ""))
                .unwrap()
                .accepts("use_fsdp")
        );
        let e = probe_fake(captured(
            Some(1),
            "",
            "Traceback (most recent call last):\nModuleNotFoundError: No module named 'peft'\n",
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("exited with code 1") && msg.contains("No module named 'peft'"),
            "{msg}"
        );
        let e = probe_fake(captured(Some(0), "hello\n", "")).unwrap_err();
        assert!(matches!(e, ScriptCapsError::NoFlags { .. }), "{e}");
        let e = probe_fake(Err(|| RunError::Timeout {
            program: "/env/bin/python".into(),
            timeout: Duration::from_secs(5),
        }))
        .unwrap_err();
        assert!(e.to_string().contains("within 5 s"), "{e}");
    }

    #[test]
    fn system_runner_captures_and_times_out() {
        let sh = Path::new("/bin/sh");
        let out = SystemRunner
            .run(
                sh,
                &[
                    OsStr::new("-c"),
                    OsStr::new("echo out; echo err >&2; exit 3"),
                ],
                None,
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(
            out,
            Captured {
                exit_code: Some(3),
                stdout: "out\n".into(),
                stderr: "err\n".into()
            }
        );
        // An argument with shell metacharacters arrives as one literal argument.
        let out = SystemRunner
            .run(
                Path::new("/bin/echo"),
                &[OsStr::new("a; $(rm -rf /) 'b'")],
                None,
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(out.stdout, "a; $(rm -rf /) 'b'\n");
        let start = Instant::now();
        let e = SystemRunner
            .run(
                sh,
                &[OsStr::new("-c"), OsStr::new("sleep 30")],
                None,
                Duration::from_millis(300),
            )
            .unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }), "{e}");
        // Well before the 30 s sleep ends; the margin is what a busy 2-core machine needs.
        assert!(start.elapsed() < Duration::from_secs(20));
        let e = SystemRunner
            .run(
                Path::new("/nonexistent/python"),
                &[],
                None,
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/python"), "{e}");
    }

    #[test]
    fn probe_runs_python_with_the_script_in_its_workdir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("vla-scripts")).unwrap();
        std::fs::write(dir.path().join("vla-scripts/finetune.py"), "").unwrap();
        // A stand-in interpreter: prints the help only when given the script (relative to its
        // working directory) and --help, as the real Python would.
        let python = dir.path().join("python");
        std::fs::write(
            &python,
            "#!/bin/sh\n[ -f \"$1\" ] && [ \"$2\" = --help ] || { echo \"bad argv: $*\" >&2; exit 9; }\ncat <<'EOF'\nusage: finetune.py [-h] [--batch_size int] [--use_fsdp bool]\nEOF\n",
        )
        .unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        let caps = probe(
            &python,
            Path::new("vla-scripts/finetune.py"),
            dir.path(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            caps.flags,
            ["batch_size", "use_fsdp"].map(String::from).into()
        );
        let e = probe(
            &python,
            Path::new("missing.py"),
            dir.path(),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("exited with code 9")
                && e.to_string().contains("bad argv: missing.py --help"),
            "{e}"
        );
    }
}
