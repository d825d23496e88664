//! `vla-launch doctor`: is this machine ready to launch the profile's training?
//!
//! Every fact comes through two seams, `CommandRunner` (processes) and `Host` (files, disk,
//! memory), so the checks run against fakes in tests; NVML's answer is handed in by the caller
//! (the GPU module), keeping this module independent of it.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::script_caps::{CommandRunner, ScriptCapsError};
use crate::script_choice::script_flags;

mod check;
mod setup;
use check::gib;
pub use check::{Check, Host};
pub use setup::Setup;
use setup::{base_model_check, checkpoint_disk_check, dataset_check, wandb_check};

/// The real machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn is_executable(&self, path: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn first_line(&self, path: &Path) -> Option<String> {
        use std::io::Read;
        let mut head = [0u8; 512];
        let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
        let text = String::from_utf8_lossy(&head[..n]);
        text.lines().next().map(str::to_string)
    }

    fn free_disk_bytes(&self, path: &Path) -> Result<u64, String> {
        let st =
            nix::sys::statvfs::statvfs(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // fsblkcnt_t and c_ulong are 32-bit on some targets.
        #[allow(clippy::useless_conversion)]
        Ok(u64::from(st.blocks_available()) * u64::from(st.fragment_size()))
    }

    fn meminfo(&self) -> Result<String, String> {
        std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))
    }
}

/// Flags the planner cannot work without; the others (`use_fsdp`, `gradient_checkpointing`)
/// are planned around when missing.
pub const REQUIRED_PLANNER_FLAGS: [&str; 2] = ["batch_size", "grad_accumulation_steps"];
/// Room for a few checkpoints: a merged 7.5B bf16 model is about 15 GB per save.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 50 << 30;
/// Each rank's RLDS pipeline keeps a shuffle buffer in host RAM (100 000 samples by default).
pub const DEFAULT_MIN_HOST_RAM_BYTES: u64 = 32 << 30;

/// What the doctor checks, as the caller resolved it from the profile and the CLI.
pub struct DoctorContext<'a> {
    /// `--torchrun` or the profile's; None: look `torchrun` up in `path_env`.
    pub torchrun: Option<PathBuf>,
    /// None: the interpreter of torchrun's `#!` line (the Python torchrun will run the script
    /// with), else `python3` from `path_env`.
    pub python: Option<PathBuf>,
    /// The PATH to search.
    pub path_env: Option<OsString>,
    /// The training script as the profile names it, relative to `workdir` unless absolute.
    pub script: PathBuf,
    pub workdir: PathBuf,
    /// Planner flags the profile says the script takes (`batch_size`, `use_fsdp`, ...).
    pub planner_flags: Vec<String>,
    /// NVML as the GPU module found it: Ok("driver 550.54.15, 2 GPUs") or Err(why).
    pub nvml: Result<String, String>,
    /// None when the profile's run_root_dir is unset (an unresolved placeholder).
    pub run_root_dir: Option<PathBuf>,
    pub min_free_disk_bytes: u64,
    pub min_host_ram_bytes: u64,
    /// Limit for each Python process (`import torch` can be slow on a cold file system).
    pub timeout: Duration,
    pub runner: &'a dyn CommandRunner,
    pub host: &'a dyn Host,
    /// What the run needs besides the software: its data, W&B, the base model, checkpoint space.
    pub setup: Option<Setup>,
}

fn find_in_path(name: &str, path_env: Option<&OsStr>, host: &dyn Host) -> Option<PathBuf> {
    std::env::split_paths(path_env?)
        .map(|dir| dir.join(name))
        .find(|p| host.is_executable(p))
}

/// The interpreter of a `#!` line: `#!/env/bin/python3.10` or `#!/usr/bin/env python3`.
fn shebang_python(line: &str, path_env: Option<&OsStr>, host: &dyn Host) -> Option<PathBuf> {
    let mut words = line.strip_prefix("#!")?.split_whitespace();
    let first = words.next()?;
    if first.ends_with("/env") {
        let name = words.find(|w| !w.starts_with('-'))?;
        return find_in_path(name, path_env, host);
    }
    Some(PathBuf::from(first))
}

const TORCH_PROBE: &str = "import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'available': torch.cuda.is_available(), 'devices': torch.cuda.device_count()}))";

#[derive(serde::Deserialize)]
struct TorchInfo {
    torch: String,
    cuda: Option<String>,
    available: bool,
    devices: u32,
}

/// Run every check, in the order a user fixes them.
pub fn run_checks(ctx: &DoctorContext) -> Vec<Check> {
    let mut checks = Vec::new();
    let (torchrun, check) = torchrun_check(ctx);
    checks.push(check);
    let (python, check) = python_check(ctx, torchrun.as_deref());
    checks.push(check);
    checks.extend(torch_checks(ctx, python.as_deref()));
    let (script_found, check) = script_check(ctx);
    checks.push(check);
    checks.push(match (&python, script_found) {
        (Some(py), true) => script_flags_check(ctx, py),
        _ => Check::fail(
            "script flags",
            "not checked: needs python and the script",
            "fix the checks above first",
        ),
    });
    checks.push(nvml_check(ctx));
    checks.push(disk_check(ctx));
    checks.push(ram_check(ctx));
    if let Some(setup) = &ctx.setup {
        checks.push(dataset_check(ctx.host, setup));
        checks.push(wandb_check(setup));
        checks.push(base_model_check(ctx.host, setup));
        checks.push(checkpoint_disk_check(
            ctx.host,
            ctx.run_root_dir.as_deref(),
            setup,
        ));
    }
    checks
}

/// torchrun: given, else on PATH.
fn torchrun_check(ctx: &DoctorContext) -> (Option<PathBuf>, Check) {
    let torchrun = match &ctx.torchrun {
        Some(p) if ctx.host.is_executable(p) => Ok(p.clone()),
        Some(p) => Err(format!("{} is not an executable file", p.display())),
        None => find_in_path("torchrun", ctx.path_env.as_deref(), ctx.host)
            .ok_or_else(|| "torchrun is not on PATH".to_string()),
    };
    let check = match &torchrun {
        Ok(p) => Check::ok("torchrun", p.display().to_string()),
        Err(why) => Check::fail(
            "torchrun",
            why.clone(),
            "activate the training environment (the one with torch installed), or --set script.torchrun=/path/to/env/bin/torchrun",
        ),
    };
    (torchrun.ok(), check)
}

/// python: the one torchrun runs the script with (given, torchrun's #! line, or python3).
fn python_check(ctx: &DoctorContext, torchrun: Option<&Path>) -> (Option<PathBuf>, Check) {
    let path_env = ctx.path_env.as_deref();
    let python = ctx
        .python
        .clone()
        .or_else(|| shebang_python(&ctx.host.first_line(torchrun?)?, path_env, ctx.host))
        .or_else(|| find_in_path("python3", path_env, ctx.host))
        .filter(|p| ctx.host.is_executable(p));
    let check = match &python {
        Some(p) => Check::ok("python", p.display().to_string()),
        None => Check::fail(
            "python",
            "no Python interpreter found (given, from torchrun's #! line, or python3 on PATH)",
            "activate the training environment, or set the profile's python",
        ),
    };
    (python, check)
}

/// torch and CUDA, from the Python that will run the training: two checks.
fn torch_checks(ctx: &DoctorContext, python: Option<&Path>) -> [Check; 2] {
    let torch = python.map(|py| {
        ctx.runner
            .run(
                py,
                &[OsStr::new("-c"), OsStr::new(TORCH_PROBE)],
                None,
                ctx.timeout,
            )
            .map_err(|e| e.to_string())
            .and_then(|out| {
                let json = out.stdout.lines().rev().find(|l| l.starts_with('{'));
                match (out.exit_code, json) {
                    (Some(0), Some(j)) => {
                        serde_json::from_str::<TorchInfo>(j).map_err(|e| e.to_string())
                    }
                    _ => Err(out
                        .stderr
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("no output")
                        .trim()
                        .to_string()),
                }
            })
    });
    match torch {
        None => [
            Check::fail("torch", "not checked: no Python", "fix python first"),
            Check::fail("torch CUDA", "not checked: no Python", "fix python first"),
        ],
        Some(Err(why)) => [
            Check::fail(
                "torch",
                format!("`import torch` failed: {why}"),
                "install torch into the training environment (pip install torch, or the OpenVLA-OFT requirements)",
            ),
            Check::fail(
                "torch CUDA",
                "not checked: torch does not import",
                "fix torch first",
            ),
        ],
        Some(Ok(info)) => [
            Check::ok("torch", format!("torch {}", info.torch)),
            match (&info.cuda, info.available) {
                (None, _) => Check::fail(
                    "torch CUDA",
                    format!("torch {} is a CPU-only build", info.torch),
                    "install a CUDA build of torch matching the driver (pip install torch --index-url https://download.pytorch.org/whl/cu121)",
                ),
                (Some(cuda), false) => Check::fail(
                    "torch CUDA",
                    format!("torch built for CUDA {cuda} sees no GPU"),
                    "check nvidia-smi and CUDA_VISIBLE_DEVICES; the driver may be older than CUDA {cuda} needs",
                ),
                (Some(cuda), true) => Check::ok(
                    "torch CUDA",
                    format!("CUDA {cuda}, {} GPU(s) visible", info.devices),
                ),
            },
        ],
    }
}

/// The training script, in its workdir.
fn script_check(ctx: &DoctorContext) -> (bool, Check) {
    let script = if ctx.script.is_absolute() {
        ctx.script.clone()
    } else {
        ctx.workdir.join(&ctx.script)
    };
    let found = ctx.host.is_file(&script);
    let check = if found {
        Check::ok("script", script.display().to_string())
    } else {
        Check::fail(
            "script",
            format!("{} does not exist", script.display()),
            "export OPENVLA_OFT_DIR=/path/to/openvla-oft (your OpenVLA-OFT checkout), or set the profile's script.workdir",
        )
    };
    (found, check)
}

/// NVML and the driver, as the GPU module found them.
fn nvml_check(ctx: &DoctorContext) -> Check {
    match &ctx.nvml {
        Ok(detail) => Check::ok("NVML", detail.clone()),
        Err(why) => Check::fail(
            "NVML",
            why.clone(),
            "install the NVIDIA driver (libnvidia-ml.so comes with it); check `nvidia-smi`; plan with --gpus SPEC where there is no GPU",
        ),
    }
}

fn script_flags_check(ctx: &DoctorContext, python: &Path) -> Check {
    // As every command asks (src/script_choice.rs): --help, else the source's dataclass fields.
    let mut note = String::new();
    let caps = match script_flags(
        ctx.runner,
        python,
        &ctx.script,
        &ctx.workdir,
        ctx.timeout,
        None,
    ) {
        Ok(answer) => {
            if let Some(e) = answer.help_error {
                note = format!(" (read from its source: its --help failed: {e})");
            }
            answer.caps
        }
        Err(e) => {
            let fix = match e {
                ScriptCapsError::NoFlags { .. } => {
                    "point the profile's script at vla-scripts/finetune.py"
                }
                _ => {
                    "run the script's --help by hand in the training environment and install what it lacks"
                }
            };
            return Check::fail("script flags", e.to_string(), fix);
        }
    };
    let (accepted, missing): (Vec<&String>, Vec<&String>) =
        ctx.planner_flags.iter().partition(|f| caps.accepts(f));
    let list = |v: &[&String]| {
        v.iter()
            .map(|f| format!("--{}", f.trim_start_matches('-')))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut detail = format!(
        "accepts {}",
        if accepted.is_empty() {
            "none of the planner flags".into()
        } else {
            list(&accepted)
        }
    );
    if missing.is_empty() {
        return Check::ok("script flags", detail + &note);
    }
    detail += &format!("; lacks {}", list(&missing));
    detail += &note;
    let required_missing: Vec<&String> = missing
        .iter()
        .copied()
        .filter(|f| REQUIRED_PLANNER_FLAGS.contains(&f.trim_start_matches('-')))
        .collect();
    if required_missing.is_empty() {
        Check::ok("script flags", detail + " (the planner plans without them)")
    } else {
        Check::fail(
            "script flags",
            detail,
            format!(
                "the planner needs {}: use OpenVLA-OFT's vla-scripts/finetune.py or a fork that keeps them",
                list(&required_missing)
            ),
        )
    }
}

fn disk_check(ctx: &DoctorContext) -> Check {
    let Some(dir) = &ctx.run_root_dir else {
        return Check::fail(
            "disk",
            "run_root_dir is not set",
            "export VLA_RUN_ROOT=/path/with/space (or --set train.run_root_dir=...)",
        );
    };
    // The run directory is created at launch; measure the file system it will land on.
    let existing = dir
        .ancestors()
        .find(|p| ctx.host.free_disk_bytes(p).is_ok())
        .unwrap_or(dir);
    match ctx.host.free_disk_bytes(existing) {
        Ok(free) if free >= ctx.min_free_disk_bytes => Check::ok(
            "disk",
            format!("{} free at {}", gib(free), existing.display()),
        ),
        Ok(free) => Check::fail(
            "disk",
            format!(
                "only {} free at {} (want {} for checkpoints)",
                gib(free),
                existing.display(),
                gib(ctx.min_free_disk_bytes)
            ),
            "free space or point run_root_dir (VLA_RUN_ROOT) at a larger file system; --save_latest_checkpoint_only True keeps one checkpoint",
        ),
        Err(why) => Check::fail(
            "disk",
            why,
            "make run_root_dir (VLA_RUN_ROOT) a path on a mounted file system",
        ),
    }
}

/// `MemTotal:  263842184 kB` -> bytes.
pub fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

fn ram_check(ctx: &DoctorContext) -> Check {
    let text = match ctx.host.meminfo() {
        Ok(t) => t,
        Err(why) => {
            return Check::fail(
                "host RAM",
                why,
                "doctor reads /proc/meminfo: run it on Linux",
            );
        }
    };
    let (Some(total), Some(available)) = (
        meminfo_field(&text, "MemTotal"),
        meminfo_field(&text, "MemAvailable"),
    ) else {
        return Check::fail(
            "host RAM",
            "/proc/meminfo lacks MemTotal or MemAvailable",
            "run doctor on Linux 3.14 or later",
        );
    };
    let detail = format!("{} available of {}", gib(available), gib(total));
    if available >= ctx.min_host_ram_bytes {
        Check::ok("host RAM", detail)
    } else {
        Check::fail(
            "host RAM",
            format!("{detail} (want {})", gib(ctx.min_host_ram_bytes)),
            "stop other jobs on this node, ask Slurm for more (--mem), or lower --shuffle_buffer_size",
        )
    }
}

/// The report: one line per check, the fix under each failure, a count at the end.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let status = if c.ok { "OK  " } else { "FAIL" };
        out += &format!("{status}  {:width$}  {}\n", c.name, c.detail);
        if let Some(fix) = &c.fix {
            out += &format!("      {:width$}  fix: {fix}\n", "");
        }
    }
    let passed = checks.iter().filter(|c| c.ok).count();
    out += &format!("{passed} of {} checks passed\n", checks.len());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::script_caps::Captured;
    use crate::script_caps::fake::FakeRunner;

    #[derive(Default)]
    struct FakeHost {
        executables: HashSet<PathBuf>,
        files: HashSet<PathBuf>,
        dirs: HashSet<PathBuf>,
        first_lines: HashMap<PathBuf, String>,
        disks: HashMap<PathBuf, u64>,
        meminfo: Option<String>,
    }

    impl Host for FakeHost {
        fn is_executable(&self, path: &Path) -> bool {
            self.executables.contains(path)
        }
        fn is_file(&self, path: &Path) -> bool {
            self.files.contains(path) || self.executables.contains(path)
        }
        fn is_dir(&self, path: &Path) -> bool {
            self.dirs.contains(path)
        }
        fn first_line(&self, path: &Path) -> Option<String> {
            self.first_lines.get(path).cloned()
        }
        fn free_disk_bytes(&self, path: &Path) -> Result<u64, String> {
            self.disks
                .get(path)
                .copied()
                .ok_or_else(|| format!("{}: No such file or directory", path.display()))
        }
        fn meminfo(&self) -> Result<String, String> {
            self.meminfo
                .clone()
                .ok_or_else(|| "/proc/meminfo: not found".into())
        }
    }

    fn ok_out(stdout: &str) -> Option<Captured> {
        Some(Captured {
            exit_code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        })
    }

    const HELP: &str = "usage: finetune.py [-h] [--batch_size int] [--grad_accumulation_steps int]\n                   [--use_fsdp bool]\n";
    const MEMINFO: &str =
        "MemTotal:       263842184 kB\nMemFree:         1000000 kB\nMemAvailable:   201326592 kB\n";

    fn healthy() -> (FakeHost, FakeRunner) {
        let mut host = FakeHost::default();
        host.executables.insert("/env/bin/torchrun".into());
        host.executables.insert("/env/bin/python3.10".into());
        host.executables.insert("/usr/bin/python3".into());
        host.first_lines
            .insert("/env/bin/torchrun".into(), "#!/env/bin/python3.10".into());
        host.files.insert("/src/oft/vla-scripts/finetune.py".into());
        host.disks.insert("/runs".into(), 500 << 30);
        host.meminfo = Some(MEMINFO.into());
        let runner = FakeRunner {
            torch: ok_out(
                "{\"torch\": \"2.2.0+cu121\", \"cuda\": \"12.1\", \"available\": true, \"devices\": 2}\n",
            ),
            help: ok_out(HELP),
            ..Default::default()
        };
        (host, runner)
    }

    fn ctx<'a>(host: &'a FakeHost, runner: &'a FakeRunner) -> DoctorContext<'a> {
        DoctorContext {
            torchrun: None,
            python: None,
            path_env: Some("/usr/bin:/env/bin".into()),
            script: "vla-scripts/finetune.py".into(),
            workdir: "/src/oft".into(),
            planner_flags: [
                "batch_size",
                "grad_accumulation_steps",
                "use_fsdp",
                "gradient_checkpointing",
            ]
            .map(String::from)
            .to_vec(),
            nvml: Ok("driver 550.54.15, 2 GPUs".into()),
            run_root_dir: Some("/runs/aloha".into()),
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            min_host_ram_bytes: DEFAULT_MIN_HOST_RAM_BYTES,
            timeout: Duration::from_secs(5),
            runner,
            host,
            setup: None,
        }
    }

    fn by_name<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} in {checks:?}"))
    }

    /// Upstream finetune.py's `--help` crashes under its pinned draccus (a '%' in a field
    /// comment): the flags come from its source, and the check passes saying so.
    #[test]
    fn a_crashing_help_is_read_from_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("vla-scripts/finetune.py");
        std::fs::create_dir_all(script.parent().unwrap()).unwrap();
        std::fs::write(
            &script,
            "@dataclass\nclass FinetuneConfig:\n    batch_size: int = 8\n    \
             lr_warmup_steps: int = 0  # (from 10% to 100%)\n    grad_accumulation_steps: int = 1\n",
        )
        .unwrap();
        let (mut host, mut runner) = healthy();
        host.files.insert(script.clone());
        runner.help = Some(Captured {
            exit_code: Some(1),
            stdout: String::new(),
            stderr: "ValueError: unsupported format character 't' (0x74) at index 40\n".into(),
        });
        let mut c = ctx(&host, &runner);
        c.workdir = dir.path().to_path_buf();
        let checks = run_checks(&c);
        let check = by_name(&checks, "script flags");
        assert!(check.ok, "{check:?}");
        assert!(
            check
                .detail
                .contains("lacks --use_fsdp, --gradient_checkpointing")
                && check.detail.contains("read from its source")
                && check.detail.contains("unsupported format character"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn a_ready_machine_passes_every_check() {
        let (host, runner) = healthy();
        let checks = run_checks(&ctx(&host, &runner));
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "torchrun",
                "python",
                "torch",
                "torch CUDA",
                "script",
                "script flags",
                "NVML",
                "disk",
                "host RAM"
            ]
        );
        assert!(
            checks.iter().all(|c| c.ok && c.fix.is_none()),
            "{checks:#?}"
        );
        assert_eq!(by_name(&checks, "torchrun").detail, "/env/bin/torchrun");
        // The Python of torchrun's #! line, not the first python3 on PATH.
        assert_eq!(by_name(&checks, "python").detail, "/env/bin/python3.10");
        assert_eq!(
            runner.calls.borrow()[0].0,
            PathBuf::from("/env/bin/python3.10")
        );
        assert_eq!(
            by_name(&checks, "torch CUDA").detail,
            "CUDA 12.1, 2 GPU(s) visible"
        );
        assert_eq!(
            by_name(&checks, "script flags").detail,
            "accepts --batch_size, --grad_accumulation_steps, --use_fsdp; lacks --gradient_checkpointing (the planner plans without them)"
        );
        // /runs/aloha does not exist yet: its parent's file system is measured.
        assert_eq!(by_name(&checks, "disk").detail, "500.0 GiB free at /runs");
        assert_eq!(
            by_name(&checks, "host RAM").detail,
            "192.0 GiB available of 251.6 GiB"
        );
        let text = render(&checks);
        assert!(
            text.starts_with("OK    torchrun      /env/bin/torchrun\n"),
            "{text}"
        );
        assert!(text.ends_with("9 of 9 checks passed\n"), "{text}");
    }

    #[test]
    fn each_failure_says_what_and_how_to_fix() {
        type Break = fn(&mut FakeHost, &mut FakeRunner, &mut Option<Result<String, String>>);
        let cases: &[(&str, Break, &str, &str)] = &[
            (
                "torchrun",
                |h, _, _| {
                    h.executables.remove(Path::new("/env/bin/torchrun"));
                },
                "not on PATH",
                "--set script.torchrun=",
            ),
            (
                "torch",
                |_, r, _| {
                    r.torch = Some(Captured {
                        exit_code: Some(1),
                        stdout: String::new(),
                        stderr: "Traceback...\nModuleNotFoundError: No module named 'torch'\n"
                            .into(),
                    })
                },
                "No module named 'torch'",
                "install torch",
            ),
            (
                "torch CUDA",
                |_, r, _| {
                    r.torch = ok_out(
                        "{\"torch\": \"2.2.0+cpu\", \"cuda\": null, \"available\": false, \"devices\": 0}",
                    )
                },
                "CPU-only",
                "CUDA build",
            ),
            (
                "torch CUDA",
                |_, r, _| {
                    r.torch = ok_out(
                        "{\"torch\": \"2.2.0\", \"cuda\": \"12.1\", \"available\": false, \"devices\": 0}",
                    )
                },
                "sees no GPU",
                "nvidia-smi",
            ),
            (
                "torch",
                |_, r, _| r.torch = None,
                "did not finish within 5 s",
                "install torch",
            ),
            (
                "script",
                |h, _, _| {
                    h.files.clear();
                },
                "/src/oft/vla-scripts/finetune.py does not exist",
                "workdir",
            ),
            (
                "script flags",
                |_, r, _| r.help = ok_out("usage: finetune.py [-h] [--batch_size int]\n"),
                "lacks --grad_accumulation_steps, --use_fsdp, --gradient_checkpointing",
                "needs --grad_accumulation_steps",
            ),
            (
                "script flags",
                |_, r, _| {
                    r.help = Some(Captured {
                        exit_code: Some(1),
                        stdout: String::new(),
                        stderr: "ImportError: cannot import name 'x'\n".into(),
                    })
                },
                "exited with code 1",
                "by hand",
            ),
            (
                "NVML",
                |_, _, n| {
                    *n = Some(Err(
                        "libnvidia-ml.so.1: cannot open shared object file".into()
                    ))
                },
                "libnvidia-ml",
                "driver",
            ),
            (
                "disk",
                |h, _, _| {
                    h.disks.insert("/runs".into(), 3 << 30);
                },
                "only 3.0 GiB free at /runs",
                "VLA_RUN_ROOT",
            ),
            (
                "disk",
                |h, _, _| {
                    h.disks.clear();
                },
                "No such file",
                "mounted",
            ),
            (
                "host RAM",
                |h, _, _| {
                    h.meminfo = Some("MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n".into())
                },
                "8.0 GiB available of 16.0 GiB (want 32.0 GiB)",
                "--mem",
            ),
            (
                "host RAM",
                |h, _, _| h.meminfo = Some("MemTotal: 1 kB\n".into()),
                "lacks",
                "Linux",
            ),
        ];
        for (name, breaks, detail, fix) in cases {
            let (mut host, mut runner) = healthy();
            let mut nvml = None;
            breaks(&mut host, &mut runner, &mut nvml);
            let mut c = ctx(&host, &runner);
            if let Some(n) = nvml {
                c.nvml = n;
            }
            let checks = run_checks(&c);
            let check = by_name(&checks, name);
            assert!(!check.ok, "{name} should fail: {checks:#?}");
            assert!(
                check.detail.contains(detail),
                "{name}: {:?} lacks {detail:?}",
                check.detail
            );
            let f = check.fix.as_deref().unwrap_or_default();
            assert!(f.contains(fix), "{name}: fix {f:?} lacks {fix:?}");
            let text = render(&checks);
            assert!(text.contains(&format!("fix: {f}")), "{text}");
        }
    }

    #[test]
    fn given_paths_and_env_shebangs() {
        let (mut host, runner) = healthy();
        // `#!/usr/bin/env python3` resolves through PATH.
        host.first_lines
            .insert("/env/bin/torchrun".into(), "#!/usr/bin/env python3".into());
        let checks = run_checks(&ctx(&host, &runner));
        assert_eq!(by_name(&checks, "python").detail, "/usr/bin/python3");
        // A given torchrun that is not there fails even if PATH has one.
        let mut c = ctx(&host, &runner);
        c.torchrun = Some("/opt/missing/torchrun".into());
        c.python = Some("/env/bin/python3.10".into());
        let checks = run_checks(&c);
        assert_eq!(
            by_name(&checks, "torchrun").detail,
            "/opt/missing/torchrun is not an executable file"
        );
        assert!(by_name(&checks, "python").ok);
        // No Python at all: dependent checks say they were not run.
        let mut c = ctx(&host, &runner);
        c.path_env = Some("/nowhere".into());
        let checks = run_checks(&c);
        assert!(!by_name(&checks, "python").ok);
        assert!(
            by_name(&checks, "script flags")
                .detail
                .starts_with("not checked")
        );
        assert!(
            runner
                .calls
                .borrow()
                .iter()
                .all(|(p, _, _)| p != Path::new("/nowhere/python3"))
        );
        // run_root_dir unset.
        let mut c = ctx(&host, &runner);
        c.run_root_dir = None;
        assert!(
            by_name(&run_checks(&c), "disk")
                .fix
                .as_deref()
                .unwrap()
                .contains("VLA_RUN_ROOT")
        );
    }

    #[test]
    fn system_host_reads_this_machine() {
        let h = SystemHost;
        assert!(h.free_disk_bytes(Path::new("/")).unwrap() > 0);
        assert!(h.free_disk_bytes(Path::new("/no/such/dir")).is_err());
        assert!(meminfo_field(&h.meminfo().unwrap(), "MemTotal").unwrap() > 0);
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (plain, script) = (dir.path().join("plain"), dir.path().join("torchrun"));
        std::fs::write(&plain, "x").unwrap();
        std::fs::write(&script, "#!/env/bin/python3.10 -u\nimport sys\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            h.is_executable(&script) && !h.is_executable(&plain) && !h.is_executable(dir.path())
        );
        assert!(h.is_file(&plain) && !h.is_file(dir.path()));
        assert_eq!(
            h.first_line(&script).as_deref(),
            Some("#!/env/bin/python3.10 -u")
        );
        assert_eq!(
            shebang_python("#!/env/bin/python3.10 -u", None, &h),
            Some("/env/bin/python3.10".into())
        );
    }

    fn setup_ready() -> Setup {
        Setup {
            data_root_dir: Some("/data".into()),
            dataset_name: Some("aloha1".into()),
            wandb_mode: None,
            wandb_api_key: false,
            wandb_netrc: true,
            wandb_names_set: true,
            base_model: Some("openvla/openvla-7b".into()),
            hf_cache: Some("/hf/hub".into()),
            hf_offline: true,
            checkpoints: Some((10, 15 << 30)),
        }
    }

    #[test]
    fn setup_checks_pass_when_ready_and_say_what_is_missing() {
        let (mut host, runner) = healthy();
        host.dirs.insert("/data".into());
        host.dirs.insert("/data/aloha1".into());
        host.dirs
            .insert("/hf/hub/models--openvla--openvla-7b".into());
        let mut c = ctx(&host, &runner);
        c.setup = Some(setup_ready());
        let checks = run_checks(&c);
        for name in ["dataset", "wandb", "base model", "checkpoint disk"] {
            assert!(by_name(&checks, name).ok, "{name}: {checks:?}");
        }
        assert!(
            by_name(&checks, "checkpoint disk")
                .detail
                .contains("10 checkpoints")
        );

        let (mut host, runner) = healthy();
        host.dirs.insert("/data".into());
        host.disks.insert("/runs".into(), 100 << 30);
        let mut c = ctx(&host, &runner);
        c.setup = Some(Setup {
            wandb_netrc: false,
            ..setup_ready()
        });
        let checks = run_checks(&c);
        let dataset = by_name(&checks, "dataset");
        assert!(
            !dataset.ok && dataset.detail.contains("/data has no aloha1/"),
            "{dataset:?}"
        );
        let wandb = by_name(&checks, "wandb");
        assert!(!wandb.ok && wandb.fix.as_deref().unwrap().contains("WANDB_MODE=offline"));
        let model = by_name(&checks, "base model");
        assert!(
            !model.ok
                && model
                    .fix
                    .as_deref()
                    .unwrap()
                    .contains("huggingface-cli download")
        );
        let disk = by_name(&checks, "checkpoint disk");
        assert!(
            !disk.ok && disk.detail.contains("only 100.0 GiB free"),
            "{disk:?}"
        );

        c.setup = Some(Setup {
            wandb_mode: Some("offline".into()),
            wandb_netrc: false,
            wandb_names_set: false,
            ..setup_ready()
        });
        assert!(by_name(&run_checks(&c), "wandb").ok);
    }
}
