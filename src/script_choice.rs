//! Which script a launch really runs, and which optional planner flags it takes.
//!
//! Three questions, asked the same way by `plan`, `--dry-run`, a launch and `doctor`:
//! 1. What flags does the script define? Its `--help` (script_caps), else, when `--help` fails
//!    (upstream finetune.py's crashes under its pinned draccus 0.8.0: a '%' in a field comment),
//!    the fields of the dataclasses in its source. The answer is cached per script file and
//!    Python (path, mtime, size), so planning stays fast.
//! 2. Does the script lack a flag the profile wants (`script.accepts`)? Then, with
//!    `script.fsdp_addition: auto` (the default) and vla-launch's `scripts/finetune_fsdp.py`
//!    installed, that addition runs instead, with `VLA_FINETUNE_SCRIPT` naming the script
//!    (docs/fsdp.md). [`choose`] decides; it is pure.
//! 3. Outside a checkout (no script to ask) the flags are assumed from the profile, and said so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::budget::FsdpVersion;
use crate::profile::FsdpAddition;
use crate::script_caps::{CommandRunner, ScriptCaps, ScriptCapsError, probe_with};

/// The addition, relative to the directory of vla-launch's shipped files (src/install.rs).
pub const ADDITION: &str = "scripts/finetune_fsdp.py";
/// The real-code probe (`calibrate` in a checkout), relative to the same directory.
pub const REAL_PROBE: &str = "scripts/real_probe_finetune.py";
/// How the addition is told which finetune.py to import.
pub const ENV_FINETUNE_SCRIPT: &str = "VLA_FINETUNE_SCRIPT";
/// The flags the addition gives a script that lacks them.
pub const ADDITION_FLAGS: &[&str] = &["use_fsdp", "gradient_checkpointing"];

/// What one pass over a Python source finds in its `@dataclass` classes: their fields
/// (`    use_fsdp: bool = False`), the flags draccus makes of them -- only lines at a dataclass
/// body's own indentation count, so a local variable annotated inside a method is not taken --
/// and the bases they extend that the source does not define (`class P(ft.FinetuneConfig):`),
/// whose fields, hence flags, are not in this file.
struct SourceScan {
    caps: ScriptCaps,
    bases_elsewhere: Vec<String>,
}

fn scan_source(source: &str) -> SourceScan {
    let mut flags = BTreeSet::new();
    let mut defined = BTreeSet::new();
    let mut bases = Vec::new();
    let mut pending = false; // saw @dataclass, waiting for its class line
    let mut class_indent: Option<usize> = None;
    let mut body_indent: Option<usize> = None;
    let mut in_string = false; // inside a triple-quoted block
    for line in source.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let quotes = trimmed.matches("\"\"\"").count() + trimmed.matches("'''").count();
        if in_string {
            in_string = quotes % 2 == 0;
            continue;
        }
        if quotes % 2 == 1 {
            in_string = true;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let class = trimmed.strip_prefix("class ").map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let list = rest[name.len()..]
                .strip_prefix('(')
                .and_then(|r| r.split_once(')'))
                .map(|(l, _)| l);
            (name, list)
        });
        if let Some((name, _)) = &class {
            defined.insert(name.clone());
        }
        if let Some(ci) = class_indent {
            if indent <= ci {
                class_indent = None;
                body_indent = None;
            } else {
                let bi = *body_indent.get_or_insert(indent);
                if indent == bi
                    && let Some((name, rest)) = trimmed.split_once(':')
                    && rest.starts_with(' ')
                    && !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                {
                    flags.insert(name.to_string());
                }
                continue;
            }
        }
        if trimmed.starts_with("@dataclass") || trimmed.starts_with("@dataclasses.dataclass") {
            pending = true;
        } else if let (true, Some((_, list))) = (pending, &class) {
            pending = false;
            class_indent = Some(indent);
            bases.extend(
                list.unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|b| !b.is_empty() && *b != "object" && !b.contains('='))
                    .map(String::from),
            );
        } else if !trimmed.starts_with('@') {
            pending = false;
        }
    }
    bases.retain(|b| !defined.contains(b));
    SourceScan {
        caps: ScriptCaps { flags },
        bases_elsewhere: bases,
    }
}

/// How the flags were learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagsFrom {
    /// The script's `--help`.
    Help,
    /// Its `--help` failed; the dataclass fields in its source.
    Source,
}

/// The flags a script defines, and how that is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagsAnswer {
    pub caps: ScriptCaps,
    pub from: FlagsFrom,
    /// Why `--help` was not used (its error), for `FlagsFrom::Source`.
    pub help_error: Option<String>,
    /// Read from the cache, not asked now.
    pub cached: bool,
}

/// What the cache knows a script by: the file as it is now, and the Python that reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub script: PathBuf,
    pub mtime_ns: i128,
    pub size: u64,
    pub python: String,
}

impl CacheKey {
    /// The key of the script file as it is now (None if it cannot be read).
    pub fn of(script: &Path, python: &Path) -> Option<CacheKey> {
        // Absolute but not resolved: two links to one file may be two scripts (a script can
        // look at its own name).
        let script = std::path::absolute(script).ok()?;
        let meta = std::fs::metadata(&script).ok()?;
        let mtime = meta.modified().ok()?;
        let mtime_ns = match mtime.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        Some(CacheKey {
            script,
            mtime_ns,
            size: meta.len(),
            python: python.display().to_string(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    key: CacheKey,
    flags: Vec<String>,
    from: FlagsFrom,
    #[serde(default)]
    help_error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: Vec<CacheEntry>,
}

/// File name of the cache in the user cache directory (next to calibration.json).
pub const CACHE_FILE: &str = "script-flags.json";
const CACHE_VERSION: u32 = 1;
/// Entries kept: one per script and Python a user plans with.
const CACHE_MAX_ENTRIES: usize = 64;
/// A cache file larger than this is ignored (it is a few KiB).
const CACHE_MAX_BYTES: u64 = 1 << 20;

fn read_cache(path: &Path) -> CacheFile {
    let ok = std::fs::metadata(path).is_ok_and(|m| m.len() <= CACHE_MAX_BYTES);
    ok.then(|| std::fs::read_to_string(path).ok())
        .flatten()
        .and_then(|t| serde_json::from_str::<CacheFile>(&t).ok())
        .filter(|c| c.version == CACHE_VERSION)
        .unwrap_or_default()
}

fn write_cache(path: &Path, entry: CacheEntry) -> std::io::Result<()> {
    let mut file = read_cache(path);
    file.version = CACHE_VERSION;
    file.entries
        .retain(|e| e.key.script != entry.key.script || e.key.python != entry.key.python);
    file.entries.push(entry);
    let over = file.entries.len().saturating_sub(CACHE_MAX_ENTRIES);
    file.entries.drain(..over);
    if let Some(dir) = path.parent() {
        crate::calibration::create_private_dir(dir)?;
    }
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    crate::calibration::write_private(&tmp, &serde_json::to_vec_pretty(&file)?)?;
    std::fs::rename(&tmp, path)
}

/// The flags `script` defines: from the cache when the file and Python are unchanged, else from
/// `python script --help` in `workdir`, else (when `--help` fails or lists nothing) from the
/// dataclass fields in its source. Only a run that reached an answer is cached; after a timeout or
/// a Python that cannot start the source's answer is used but not cached.
pub fn script_flags(
    runner: &dyn CommandRunner,
    python: &Path,
    script: &Path,
    workdir: &Path,
    timeout: Duration,
    cache: Option<&Path>,
) -> Result<FlagsAnswer, ScriptCapsError> {
    // The file as seen from the working directory `--help` runs in.
    let file = workdir.join(script);
    let key = CacheKey::of(&file, python);
    if let (Some(key), Some(path)) = (&key, cache)
        && let Some(e) = read_cache(path).entries.into_iter().find(|e| &e.key == key)
    {
        return Ok(FlagsAnswer {
            caps: ScriptCaps {
                flags: e.flags.into_iter().collect(),
            },
            from: e.from,
            help_error: e.help_error,
            cached: true,
        });
    }
    let answer = match probe_with(runner, python, script, workdir, timeout) {
        Ok(caps) => FlagsAnswer {
            caps,
            from: FlagsFrom::Help,
            help_error: None,
            cached: false,
        },
        Err(e) => {
            let scan = scan_source(&std::fs::read_to_string(&file).unwrap_or_default());
            // No fields, or fields of a config that extends one defined elsewhere: the source
            // does not say which flags the script takes.
            if scan.caps.flags.is_empty() || !scan.bases_elsewhere.is_empty() {
                return Err(e);
            }
            let caps = scan.caps;
            // A timeout or a Python that cannot start may pass: ask again next time.
            let lasting = matches!(
                e,
                ScriptCapsError::HelpFailed { .. } | ScriptCapsError::NoFlags { .. }
            );
            let answer = FlagsAnswer {
                caps,
                from: FlagsFrom::Source,
                help_error: Some(e.to_string()),
                cached: false,
            };
            if !lasting {
                return Ok(answer);
            }
            answer
        }
    };
    if let (Some(key), Some(path)) = (key, cache) {
        let entry = CacheEntry {
            key,
            flags: answer.caps.flags.iter().cloned().collect(),
            from: answer.from,
            help_error: answer.help_error.clone(),
        };
        if let Err(e) = write_cache(path, entry) {
            tracing::debug!("script flags cache {} not written: {e}", path.display());
        }
    }
    Ok(answer)
}

/// What runs: the profile's script, or the addition around it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ScriptRun {
    /// The profile's script itself.
    Script,
    /// vla-launch's `finetune_fsdp.py` (at `addition`), importing the profile's script.
    Addition { addition: PathBuf },
}

/// The decision, with the flags the planner may use and why, for the plan and `doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptChoice {
    pub run: ScriptRun,
    /// Optional planner flags (`use_fsdp`, `gradient_checkpointing`) the command may pass.
    pub accepts: Vec<String>,
    /// Of those, the ones the script takes itself (without the addition).
    pub own: Vec<String>,
    /// True when nobody was asked (no script here): `accepts` is the profile's assumption.
    pub assumed: bool,
    /// `script.fsdp_addition: on`: the addition runs whatever the plan.
    pub forced: bool,
    /// One sentence: which script runs and why.
    pub why: String,
}

impl ScriptChoice {
    /// For a script that is here but did not say which flags it takes (its `--help` failed and
    /// its source does not list them): the assumption stands, the reason is not "not here".
    pub fn unanswered(mut self, script: &str) -> Self {
        if self.assumed {
            self.why = assumed_why(
                &format!(
                    "{script} did not say which flags it takes (its --help failed: see the warning)"
                ),
                &self.run,
                &self.accepts,
                "",
            );
        }
        self
    }

    /// Which FSDP an FSDP plan runs: FSDP2 when `--use_fsdp` comes from the addition (the
    /// script does not take it itself), FSDP1 when the script has its own (a fork, or assumed
    /// because nobody could ask it: the larger, safe prediction).
    pub fn fsdp_version(&self) -> FsdpVersion {
        let has = |list: &[String]| list.iter().any(|f| f == "use_fsdp");
        if has(&self.accepts) && !has(&self.own) {
            FsdpVersion::Fsdp2
        } else {
            FsdpVersion::Fsdp1
        }
    }
}

/// Why an assumed choice (nobody answered for the script): `lead`, what was assumed, `tail`.
fn assumed_why(lead: &str, run: &ScriptRun, accepts: &[String], tail: &str) -> String {
    let via = match run {
        ScriptRun::Addition { .. } => " through the FSDP addition (script.fsdp_addition: on)",
        ScriptRun::Script => "",
    };
    let flags: Vec<&str> = accepts.iter().map(String::as_str).collect();
    format!(
        "{lead}: assumed it runs{via} with {} (the profile's script.accepts){tail}",
        if flags.is_empty() {
            "none of the optional flags".into()
        } else {
            flag_list(&flags)
        }
    )
}

fn flag_list(flags: &[&str]) -> String {
    flags
        .iter()
        .map(|f| format!("--{f}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides what runs. `wanted`: the profile's `script.accepts`. `has`: what the script defines
/// (None: not known, the script is not here). `addition`: the installed addition, if any.
/// `script`: the script's name for the messages. Errors are for `script.fsdp_addition: on` when
/// it cannot be honoured, worded with the fix.
pub fn choose(
    setting: FsdpAddition,
    wanted: &[String],
    has: Option<&ScriptCaps>,
    addition: Option<&Path>,
    script: &str,
) -> Result<ScriptChoice, String> {
    let Some(has) = has else {
        let run = match (setting, addition) {
            (FsdpAddition::On, Some(a)) => ScriptRun::Addition {
                addition: a.to_path_buf(),
            },
            _ => ScriptRun::Script,
        };
        let why = assumed_why(
            &format!("{script} is not here to ask"),
            &run,
            wanted,
            "; run `plan` in the checkout (or set OPENVLA_OFT_DIR) to check",
        );
        return Ok(ScriptChoice {
            run,
            accepts: wanted.to_vec(),
            own: wanted.to_vec(),
            assumed: true,
            forced: setting == FsdpAddition::On,
            why,
        });
    };
    let lacking: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|f| !has.accepts(f))
        .collect();
    let own: Vec<String> = wanted.iter().filter(|f| has.accepts(f)).cloned().collect();
    let bare = |why: String| ScriptChoice {
        run: ScriptRun::Script,
        accepts: own.clone(),
        own: own.clone(),
        assumed: false,
        forced: false,
        why,
    };
    let has_fsdp = has.accepts("use_fsdp");
    let with_addition = |why: String| ScriptChoice {
        run: ScriptRun::Addition {
            addition: addition.expect("checked").to_path_buf(),
        },
        // The addition adds its flags and passes every other flag to the script.
        accepts: wanted
            .iter()
            .filter(|f| has.accepts(f) || ADDITION_FLAGS.contains(&f.as_str()))
            .cloned()
            .collect(),
        own: own.clone(),
        assumed: false,
        forced: setting == FsdpAddition::On,
        why,
    };
    match setting {
        FsdpAddition::Off => Ok(bare(if lacking.is_empty() {
            format!("runs {script}: it takes every flag the profile wants")
        } else {
            format!(
                "runs {script}, which lacks {}: planned without (script.fsdp_addition: off)",
                flag_list(&lacking)
            )
        })),
        FsdpAddition::On if has_fsdp => Err(format!(
            "script.fsdp_addition is on, but {script} takes --use_fsdp itself and the addition \
             refuses to wrap a script that does: set script.fsdp_addition to auto (--set script.fsdp_addition=auto)"
        )),
        FsdpAddition::On if addition.is_none() => Err(format!(
            "script.fsdp_addition is on, but vla-launch's {ADDITION} is not installed: \
             `pip install vla-launch` (or export VLA_LAUNCH_DIR=/path/to/vla-launch-checkout), \
             or set script.fsdp_addition to auto"
        )),
        FsdpAddition::On => Ok(with_addition(format!(
            "runs {ADDITION} around {script} (script.fsdp_addition: on)"
        ))),
        FsdpAddition::Auto if lacking.is_empty() => Ok(bare(format!(
            "runs {script}: it takes every flag the profile wants{}",
            if wanted.is_empty() {
                String::new()
            } else {
                format!(" ({})", {
                    let w: Vec<&str> = wanted.iter().map(String::as_str).collect();
                    flag_list(&w)
                })
            }
        ))),
        FsdpAddition::Auto if has_fsdp => Ok(bare(format!(
            "runs {script}, which lacks {}: planned without (it takes --use_fsdp, so the addition does not apply)",
            flag_list(&lacking)
        ))),
        FsdpAddition::Auto if addition.is_none() => Ok(bare(format!(
            "runs {script}, which lacks {}: planned without, as vla-launch's {ADDITION} (which adds them) \
             is not installed (`pip install vla-launch`, or export VLA_LAUNCH_DIR=/path/to/vla-launch-checkout)",
            flag_list(&lacking)
        ))),
        FsdpAddition::Auto => Ok(with_addition(format!(
            "runs {ADDITION} around {script} for plans that use {}, which the script lacks \
             (script.fsdp_addition: auto); other plans run the script itself",
            flag_list(&lacking)
        ))),
    }
}

/// The choice for one plan. With `auto`, the addition runs only when the plan sets a flag to
/// True that the script lacks (FSDP, or checkpointing); a plan that needs neither runs the
/// script itself, exactly as upstream, without the optional flags it lacks.
pub fn for_plan(
    choice: &ScriptChoice,
    fsdp: bool,
    checkpointing: bool,
    script: &str,
) -> ScriptChoice {
    let ScriptRun::Addition { .. } = choice.run else {
        return choice.clone();
    };
    let needs: Vec<&str> = [
        (fsdp, "use_fsdp"),
        (checkpointing, "gradient_checkpointing"),
    ]
    .into_iter()
    .filter(|&(on, f)| on && !choice.own.iter().any(|o| o == f))
    .map(|(_, f)| f)
    .collect();
    if choice.forced || !needs.is_empty() {
        return choice.clone();
    }
    ScriptChoice {
        run: ScriptRun::Script,
        accepts: choice.own.clone(),
        why: format!(
            "runs {script} itself: this plan needs no flag it lacks ({ADDITION} would run for one with FSDP or checkpointing)"
        ),
        ..choice.clone()
    }
}

/// The installed addition, as an absolute path, if the shipped files are found.
pub fn installed(data_dir: &crate::install::DataDir, relative: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(data_dir.value()?);
    let path = dir.join(relative);
    if !path.is_file() {
        return None;
    }
    Some(std::fs::canonicalize(&path).unwrap_or(path))
}

#[cfg(test)]
mod tests;
