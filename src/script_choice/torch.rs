//! The torch the run will use, and which FSDP the addition can run on it (issue 24).
//!
//! Upstream OpenVLA-OFT pins torch 2.2.0, which has FSDP1 (`FullyShardedDataParallel` with
//! `use_orig_params`) but not FSDP2 (`fully_shard`, 2.4; the addition's checkpoint save also needs
//! `DTensor` exported from `torch.distributed.tensor`, 2.5). The addition
//! (`scripts/finetune_fsdp.py`) runs FSDP2 from torch 2.5 and FSDP1 from 2.2 (it refuses older
//! torch before loading a model: scripts/vlalaunch/torchcompat.py), so the plan must
//! predict the one that will run. The version comes from the Python that runs the script (the
//! one asked for its flags), cached like the flags: per Python and `PYTHONPATH`, checked against
//! the modification time and size of the `torch/__init__.py` that answered, so a `pip install`
//! of another torch is noticed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::budget::FsdpVersion;
use crate::script_caps::CommandRunner;

/// The FSDP an FSDP plan through the addition is for, `fsdp1` or `fsdp2`: set by the launcher
/// from the plan, honoured by the addition (a user may set it to force one).
pub const ENV_FSDP_IMPL: &str = "VLA_FSDP_IMPL";

/// What the Python that runs the script is asked: the version, its CUDA, and where torch is.
pub const TORCH_PROBE: &str = "import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': getattr(getattr(torch, 'version', None), 'cuda', None), 'file': getattr(torch, '__file__', None)}))";

/// The first torch whose addition runs FSDP2 (`DTensor` exported for the checkpoint save).
pub const FSDP2_FROM: (u32, u32) = (2, 5);
/// The first torch with `fully_shard`: a forced `VLA_FSDP_IMPL=fsdp2` runs from here (the addition
/// takes `DTensor` from 2.4's private module).
pub const FSDP2_FORCED_FROM: (u32, u32) = (2, 4);
/// The first torch the addition runs FSDP1 (`FullyShardedDataParallel` with `use_orig_params`)
/// on: upstream's pin; it refuses older ones.
pub const FSDP1_FROM: (u32, u32) = (2, 2);

/// The torch of the training environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorchInfo {
    /// `torch.__version__`, e.g. "2.2.0+cu121".
    pub version: String,
    /// `torch.version.cuda`; None for a CPU build.
    pub cuda: Option<String>,
}

impl TorchInfo {
    /// (major, minor) of the version, when it starts with two numbers.
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        let mut parts = self.version.split(['.', '+']);
        let number = |s: Option<&str>| -> Option<u32> {
            let digits: String = s?.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        Some((number(parts.next())?, number(parts.next())?))
    }
}

/// Which FSDP an FSDP plan runs through the addition on this torch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdditionFsdp {
    /// FSDP runs with this implementation.
    Runs { version: FsdpVersion },
    /// No FSDP: why, naming the version and the torch that would allow it.
    Unavailable { why: String },
}

fn dotted((major, minor): (u32, u32)) -> String {
    format!("{major}.{minor}")
}

/// The addition's FSDP on `torch` (None: not known, FSDP1 assumed: it runs on every torch the
/// addition supports and is the larger prediction).
pub fn addition_fsdp(torch: Option<&TorchInfo>) -> AdditionFsdp {
    let Some(t) = torch else {
        return AdditionFsdp::Runs {
            version: FsdpVersion::Fsdp1,
        };
    };
    match t.major_minor() {
        Some(v) if v >= FSDP2_FROM => AdditionFsdp::Runs {
            version: FsdpVersion::Fsdp2,
        },
        Some(v) if v >= FSDP1_FROM => AdditionFsdp::Runs {
            version: FsdpVersion::Fsdp1,
        },
        Some(_) => AdditionFsdp::Unavailable {
            why: format!(
                "FSDP not considered: torch {} has no FSDP the addition can run (FSDP1 with use_orig_params needs torch {} or later, FSDP2 torch {}); install torch {} or later (OpenVLA-OFT pins 2.2.0) to plan FSDP",
                t.version,
                dotted(FSDP1_FROM),
                dotted(FSDP2_FROM),
                dotted(FSDP1_FROM)
            ),
        },
        None => AdditionFsdp::Runs {
            version: FsdpVersion::Fsdp1,
        },
    }
}

/// `VLA_FSDP_IMPL` as the addition reads it: `fsdp1`, `fsdp2`, or empty (chosen by torch's version).
pub fn parse_forced(value: &str) -> Result<Option<FsdpVersion>, String> {
    match value.trim() {
        "" => Ok(None),
        "fsdp1" => Ok(Some(FsdpVersion::Fsdp1)),
        "fsdp2" => Ok(Some(FsdpVersion::Fsdp2)),
        other => Err(format!(
            "{ENV_FSDP_IMPL}={}: not fsdp1 or fsdp2; unset it to let torch's version choose",
            crate::input::excerpt(other, 40)
        )),
    }
}

/// [`addition_fsdp`] with `VLA_FSDP_IMPL` forcing an implementation, which the addition honours
/// where the torch has it (FSDP1 from 2.2, FSDP2 from 2.4).
pub fn addition_fsdp_forced(
    torch: Option<&TorchInfo>,
    forced: Option<FsdpVersion>,
) -> AdditionFsdp {
    let Some(version) = forced else {
        return addition_fsdp(torch);
    };
    let (name, from) = match version {
        FsdpVersion::Fsdp1 => ("fsdp1", FSDP1_FROM),
        FsdpVersion::Fsdp2 => ("fsdp2", FSDP2_FORCED_FROM),
    };
    match torch.and_then(|t| Some((t, t.major_minor()?))) {
        Some((t, v)) if v < from => AdditionFsdp::Unavailable {
            why: format!(
                "FSDP not considered: {ENV_FSDP_IMPL}={name} needs torch {} or later, and the training environment has torch {}; unset {ENV_FSDP_IMPL} or install torch {} or later",
                dotted(from),
                t.version,
                dotted(from)
            ),
        },
        _ => AdditionFsdp::Runs { version },
    }
}

/// One sentence for the plan: the torch and the FSDP it gives the addition.
pub fn describe(torch: Option<&TorchInfo>, fsdp: &AdditionFsdp) -> String {
    let forced = matches!(fsdp, AdditionFsdp::Runs { .. }) && *fsdp != addition_fsdp(torch);
    if let (true, AdditionFsdp::Runs { version }) = (forced, fsdp) {
        let name = match version {
            FsdpVersion::Fsdp1 => "FSDP1",
            FsdpVersion::Fsdp2 => "FSDP2",
        };
        let on = torch.map_or("torch version not known".into(), |t| {
            format!("torch {}", t.version)
        });
        return format!("{on}: the addition runs {name}, as {ENV_FSDP_IMPL} says");
    }
    let cuda = |t: &TorchInfo| match &t.cuda {
        Some(c) => format!("CUDA {c}"),
        None => "a CPU-only build".into(),
    };
    match (torch, fsdp) {
        (Some(t), AdditionFsdp::Runs { version }) => format!(
            "torch {} ({}): the addition runs {}",
            t.version,
            cuda(t),
            match version {
                FsdpVersion::Fsdp2 => "FSDP2 (fully_shard)".to_string(),
                FsdpVersion::Fsdp1 => format!(
                    "FSDP1 (FullyShardedDataParallel, use_orig_params); FSDP2 needs torch {} or later",
                    dotted(FSDP2_FROM)
                ),
            }
        ),
        (Some(t), AdditionFsdp::Unavailable { .. }) => format!(
            "torch {} ({}): the addition can run no FSDP on it (FSDP1 needs torch {}, FSDP2 {})",
            t.version,
            cuda(t),
            dotted(FSDP1_FROM),
            dotted(FSDP2_FROM)
        ),
        (None, _) => format!(
            "torch version not known: assumed the addition runs FSDP1 (the larger prediction; it runs on torch {} and later, FSDP2 from {})",
            dotted(FSDP1_FROM),
            dotted(FSDP2_FROM)
        ),
    }
}

/// What the cache knows a Python by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Key {
    /// As the profile names it (`python3`, `/env/bin/python`).
    python: String,
    /// `PYTHONPATH` when asked: it changes which torch imports.
    pythonpath: Option<String>,
    /// `VIRTUAL_ENV` when asked (an activated venv reached through `python3`).
    virtual_env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    key: Key,
    torch: TorchInfo,
    /// The `torch/__init__.py` that answered, with its mtime (ns) and size then.
    file: PathBuf,
    mtime_ns: i128,
    size: u64,
}

/// File name of the cache in the user cache directory (next to script-flags.json).
pub const CACHE_FILE: &str = "torch-env.json";
const CACHE_VERSION: u32 = 1;
const CACHE_MAX_ENTRIES: usize = 32;

/// The environment that decides which torch `python` imports (read by the caller, so tests and
/// the pure parts need no process environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonEnv {
    pub pythonpath: Option<String>,
    pub virtual_env: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Answer {
    torch: String,
    cuda: Option<String>,
    file: Option<PathBuf>,
}

/// The torch `python` imports (run in `workdir`): from the cache when the same Python and
/// environment answered before and its `torch/__init__.py` is unchanged, else by asking. An
/// error says why not (no Python, `import torch` failed), in one line.
pub fn learn(
    runner: &dyn CommandRunner,
    python: &Path,
    env: &PythonEnv,
    workdir: &Path,
    timeout: Duration,
    cache: Option<&Path>,
) -> Result<TorchInfo, String> {
    let key = Key {
        python: python.display().to_string(),
        pythonpath: env.pythonpath.clone(),
        virtual_env: env.virtual_env.clone(),
    };
    if let Some(path) = cache
        && let Some(e) = super::cache::read::<Entry>(path, CACHE_VERSION)
            .into_iter()
            .find(|e| e.key == key)
        && super::cache::stamp(&e.file) == Some((e.mtime_ns, e.size))
    {
        return Ok(e.torch);
    }
    let out = runner
        .run(
            python,
            &[OsStr::new("-c"), OsStr::new(TORCH_PROBE)],
            Some(workdir),
            timeout,
        )
        .map_err(|e| e.to_string())?;
    let json = out.stdout.lines().rev().find(|l| l.starts_with('{'));
    let answer = match (out.exit_code, json) {
        (Some(0), Some(j)) => serde_json::from_str::<Answer>(j).map_err(|e| e.to_string())?,
        _ => {
            let last = out
                .stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim();
            return Err(format!(
                "`import torch` failed: {}",
                crate::input::excerpt(last, 120)
            ));
        }
    };
    let torch = TorchInfo {
        version: answer.torch,
        cuda: answer.cuda,
    };
    if let (Some(path), Some(file)) = (cache, answer.file)
        && let Some((mtime_ns, size)) = super::cache::stamp(&file)
    {
        let entry = Entry {
            key,
            torch: torch.clone(),
            file,
            mtime_ns,
            size,
        };
        let put = super::cache::put(path, CACHE_VERSION, CACHE_MAX_ENTRIES, entry, |a, b| {
            a.key == b.key
        });
        if let Err(e) = put {
            tracing::debug!("torch cache {} not written: {e}", path.display());
        }
    }
    Ok(torch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script_caps::Captured;
    use crate::script_caps::fake::FakeRunner;

    fn torch(v: &str) -> TorchInfo {
        TorchInfo {
            version: v.into(),
            cuda: Some("12.1".into()),
        }
    }

    #[test]
    fn the_addition_runs_the_fsdp_its_torch_has() {
        for (version, want) in [
            ("2.2.0+cu121", Some(FsdpVersion::Fsdp1)),
            // The addition refuses torch below 2.2 (scripts/vlalaunch/torchcompat.py).
            ("2.0.1", None),
            ("2.1.2", None),
            // 2.4 has fully_shard, but the addition's save needs DTensor exported (2.5).
            ("2.4.1", Some(FsdpVersion::Fsdp1)),
            ("2.5.0a0+git1234", Some(FsdpVersion::Fsdp2)),
            ("2.11.0", Some(FsdpVersion::Fsdp2)),
            ("3.0.0", Some(FsdpVersion::Fsdp2)),
            ("1.13.1", None),
        ] {
            let got = match addition_fsdp(Some(&torch(version))) {
                AdditionFsdp::Runs { version } => Some(version),
                AdditionFsdp::Unavailable { why } => {
                    assert!(why.contains(version) && why.contains("2.2"), "{why}");
                    None
                }
            };
            assert_eq!(got, want, "{version}");
        }
        assert_eq!(
            addition_fsdp(None),
            AdditionFsdp::Runs {
                version: FsdpVersion::Fsdp1
            }
        );
    }

    /// `VLA_FSDP_IMPL` (the profile's env or the launcher's) forces the addition's choice, as the
    /// addition itself honours it: fsdp2 from torch 2.4 (fully_shard), fsdp1 from 2.2.
    #[test]
    fn a_forced_implementation_is_planned_where_the_torch_has_it() {
        let forced = |v: &str, f: FsdpVersion| addition_fsdp_forced(Some(&torch(v)), Some(f));
        let runs = |version| AdditionFsdp::Runs { version };
        assert_eq!(
            forced("2.11.0", FsdpVersion::Fsdp1),
            runs(FsdpVersion::Fsdp1)
        );
        assert_eq!(
            forced("2.4.1", FsdpVersion::Fsdp2),
            runs(FsdpVersion::Fsdp2)
        );
        let AdditionFsdp::Unavailable { why } = forced("2.2.0", FsdpVersion::Fsdp2) else {
            panic!("FSDP2 forced on torch 2.2");
        };
        assert!(
            why.contains("VLA_FSDP_IMPL=fsdp2") && why.contains("2.4"),
            "{why}"
        );
        assert!(matches!(
            forced("2.1.0", FsdpVersion::Fsdp1),
            AdditionFsdp::Unavailable { .. }
        ));
        assert_eq!(
            addition_fsdp_forced(None, Some(FsdpVersion::Fsdp2)),
            runs(FsdpVersion::Fsdp2)
        );
        assert_eq!(parse_forced("fsdp1"), Ok(Some(FsdpVersion::Fsdp1)));
        assert_eq!(parse_forced(""), Ok(None));
        assert!(
            parse_forced("fsdp3")
                .unwrap_err()
                .contains("fsdp1 or fsdp2")
        );
    }

    #[test]
    fn versions_are_read_up_to_their_minor() {
        assert_eq!(torch("2.11.0+cu130").major_minor(), Some((2, 11)));
        assert_eq!(torch("2.5").major_minor(), Some((2, 5)));
        assert_eq!(torch("2.6.0.dev20241001").major_minor(), Some((2, 6)));
        assert_eq!(torch("nightly").major_minor(), None);
    }

    #[test]
    fn the_answer_is_cached_until_torch_changes() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("torch").join("__init__.py");
        std::fs::create_dir_all(init.parent().unwrap()).unwrap();
        std::fs::write(&init, "__version__ = '2.2.0'\n").unwrap();
        let cache = dir.path().join("cache").join(CACHE_FILE);
        let runner = FakeRunner {
            torch: Some(Captured {
                exit_code: Some(0),
                stdout: format!(
                    "{{\"torch\": \"2.2.0\", \"cuda\": \"12.1\", \"file\": {}}}\n",
                    serde_json::to_string(&init).unwrap()
                ),
                stderr: String::new(),
            }),
            ..FakeRunner::default()
        };
        let env = PythonEnv::default();
        let ask = || {
            learn(
                &runner,
                Path::new("python3"),
                &env,
                dir.path(),
                Duration::from_secs(1),
                Some(&cache),
            )
        };
        assert_eq!(ask().unwrap(), torch("2.2.0"));
        assert_eq!(ask().unwrap(), torch("2.2.0"));
        assert_eq!(
            runner.calls.borrow().len(),
            1,
            "the second answer is cached"
        );
        // Another torch installed over it: asked again.
        std::fs::write(&init, "__version__ = '2.5.1'  # reinstalled\n").unwrap();
        ask().unwrap();
        assert_eq!(runner.calls.borrow().len(), 2);
    }

    #[test]
    fn a_python_without_torch_says_why() {
        let runner = FakeRunner {
            torch: Some(Captured {
                exit_code: Some(1),
                stdout: String::new(),
                stderr: "Traceback ...\nModuleNotFoundError: No module named 'torch'\n".into(),
            }),
            ..FakeRunner::default()
        };
        let err = learn(
            &runner,
            Path::new("python3"),
            &PythonEnv::default(),
            Path::new("."),
            Duration::from_secs(1),
            None,
        )
        .unwrap_err();
        assert!(err.contains("No module named 'torch'"), "{err}");
    }
}
