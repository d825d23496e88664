//! `${VAR}` placeholders, and the profile resolved against the environment once.

use super::derive::render_value;
use super::error::ProfileError;
use std::path::PathBuf;

use super::schema::{Loaded, Origin, Profile};

/// Result of expanding `${VAR}` / `${VAR:-default}` in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub value: String,
    /// Variables that were unset (and had no default); those stay as written.
    pub missing: Vec<String>,
}

/// Expands `${VAR}` and `${VAR:-default}`; unset variables without a default stay as written.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Expanded {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                out.push_str(&rest[start..start + 2 + end + 1]);
                missing.push(name.to_string());
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Expanded {
        value: out,
        missing,
    }
}

/// A `--name value` pair for the script.
pub type Flag = (String, String);

/// The profile's fixed flags, placeholders expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFlags {
    pub flags: Vec<Flag>,
    /// Placeholders left unset, as (field, variable).
    pub missing: Vec<(String, String)>,
}

/// The profile's fixed flags as (`--name`, value) pairs with placeholders expanded, plus the
/// placeholders left unset.
pub fn resolved_flags(p: &Profile, env: &dyn Fn(&str) -> Option<String>) -> ResolvedFlags {
    let mut flags = Vec::new();
    let mut missing = Vec::new();
    for (k, v) in &p.train {
        let key = k.as_str().unwrap_or_default();
        let e = expand(&render_value(v), env);
        for var in e.missing {
            missing.push((format!("train.{key}"), var));
        }
        flags.push((format!("--{key}"), e.value));
    }
    ResolvedFlags { flags, missing }
}

/// Unset placeholders said once: the variables, the fields that use them, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVars {
    /// `VLA_DATA_ROOT, VLA_RUN_ROOT`.
    pub vars: String,
    /// `train.data_root_dir, train.run_root_dir`.
    pub fields: String,
    /// `export VLA_DATA_ROOT=... VLA_RUN_ROOT=...`, with WANDB_MODE=offline as the alternative
    /// to the W&B pair when it is among them (a run that logs offline needs neither).
    pub fix: String,
    /// "is" or "are".
    pub verb: &'static str,
}

/// Each variable once, in the order of the fields that use them.
pub fn missing_vars(missing: &[(String, String)]) -> MissingVars {
    let mut vars: Vec<&str> = Vec::new();
    for (_, v) in missing {
        if !vars.contains(&v.as_str()) {
            vars.push(v);
        }
    }
    let fields: Vec<&str> = missing.iter().map(|(f, _)| f.as_str()).collect();
    let wandb = vars.iter().any(|v| v.starts_with("WANDB_"));
    let mut fix = format!(
        "export {}",
        vars.iter()
            .map(|v| format!("{v}=..."))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if wandb {
        fix.push_str(" (or WANDB_MODE=offline instead of WANDB_ENTITY and WANDB_PROJECT)");
    }
    MissingVars {
        vars: vars.join(", "),
        fields: fields.join(", "),
        fix,
        verb: if vars.len() == 1 { "is" } else { "are" },
    }
}

/// Refuses unset placeholders (a real launch), naming the variables first, then the fields that
/// use them and the fix.
pub fn require_env(missing: &[(String, String)], origin: &Origin) -> Result<(), ProfileError> {
    if missing.is_empty() {
        return Ok(());
    }
    let m = missing_vars(missing);
    Err(ProfileError::MissingEnv {
        place: format!(
            "the profile ({origin}) uses {} for {}",
            if m.verb == "is" { "it" } else { "them" },
            m.fields
        ),
        vars: format!("{} {} not set", m.vars, m.verb),
        example: m.fix,
        key: missing[0].0.clone(),
    })
}

/// The profile resolved against the environment, once per command: every `${VAR}` of the fields
/// a launch uses, expanded, each keeping the variables it left unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The fixed training flags (`train:`).
    pub flags: ResolvedFlags,
    pub workdir: Expanded,
    /// The training script, relative to `workdir` unless absolute.
    pub script: Expanded,
    pub python: Expanded,
    pub torchrun: Expanded,
    /// The profile's `env:` entries.
    pub env: Vec<(String, Expanded)>,
}

impl Loaded {
    /// Expands the profile's placeholders from `env` (the process environment, or a fake).
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Resolved {
        let p = &self.profile;
        Resolved {
            flags: resolved_flags(p, env),
            workdir: expand(&p.script.workdir, env),
            script: expand(&p.script.path, env),
            python: expand(&p.script.python, env),
            torchrun: expand(&p.script.torchrun, env),
            env: p
                .env
                .iter()
                .map(|(k, v)| (k.clone(), expand(v, env)))
                .collect(),
        }
    }
}

impl Resolved {
    /// The unset placeholders a launch would pass on, as (field, variable): the training flags,
    /// the workdir and script, torchrun unless `--torchrun` replaces it, then `env:`.
    pub fn missing(&self, profile_torchrun: bool) -> Vec<(String, String)> {
        let mut out = self.flags.missing.clone();
        let mut field = |name: &str, e: &Expanded| {
            out.extend(e.missing.iter().map(|v| (name.to_string(), v.clone())));
        };
        field("script.workdir", &self.workdir);
        field("script.path", &self.script);
        if profile_torchrun {
            field("script.torchrun", &self.torchrun);
        }
        for (k, e) in &self.env {
            field(&format!("env.{k}"), e);
        }
        out
    }

    /// `--run_root_dir` of the training flags, when it is set and has no unset placeholder.
    pub fn run_root_dir(&self) -> Option<PathBuf> {
        if self
            .flags
            .missing
            .iter()
            .any(|(f, _)| f == "train.run_root_dir")
        {
            return None;
        }
        self.flags
            .flags
            .iter()
            .find(|(k, _)| k == "--run_root_dir")
            .map(|(_, v)| PathBuf::from(v))
    }
}
