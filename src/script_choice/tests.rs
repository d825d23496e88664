use std::time::Duration;

use super::*;
use crate::script_caps::Captured;
use crate::script_caps::fake::FakeRunner;

/// The shape of upstream finetune.py (213c5ff): a draccus dataclass with comments and one
/// function using annotated locals; the `%` comment is what breaks its `--help`.
const UPSTREAM_SOURCE: &str = r#"
"""
finetune.py

Notes:
    batch_size: not a field, inside the module docstring
"""
import os
from dataclasses import dataclass


@dataclass
class FinetuneConfig:
    # fmt: off
    vla_path: str = "openvla/openvla-7b"             # Path to OpenVLA model
    batch_size: int = 8                              # Batch size per device
    lr_warmup_steps: int = 0                         # (from 10% to 100%)
    grad_accumulation_steps: int = 1                 # Number of gradient accumulation steps

    def helper(self):
        local_var: int = 3
        return local_var
    # fmt: on


def run_forward_pass(vla, batch):
    use_fsdp: bool = False
    return vla(batch)
"#;

fn parse_source_fields(source: &str) -> ScriptCaps {
    scan_source(source).caps
}

fn bases_defined_elsewhere(source: &str) -> Vec<String> {
    scan_source(source).bases_elsewhere
}

fn fork_source() -> String {
    UPSTREAM_SOURCE.replace(
        "    grad_accumulation_steps: int = 1",
        "    grad_accumulation_steps: int = 1\n    use_fsdp: bool = False\n    gradient_checkpointing: bool = False",
    )
}

#[test]
fn source_fields_are_the_dataclass_fields_only() {
    let caps = parse_source_fields(UPSTREAM_SOURCE);
    let want: BTreeSet<String> = [
        "vla_path",
        "batch_size",
        "lr_warmup_steps",
        "grad_accumulation_steps",
    ]
    .map(String::from)
    .into();
    assert_eq!(caps.flags, want);
    let fork = parse_source_fields(&fork_source());
    assert!(fork.accepts("use_fsdp") && fork.accepts("gradient_checkpointing"));
    assert!(
        parse_source_fields("x: int = 3\nclass A:\n    y: int = 1\n")
            .flags
            .is_empty()
    );
}

#[test]
fn the_real_upstream_script_has_neither_flag() {
    // The upstream checkout the real-code probe uses, where this machine has one.
    let path = Path::new("/work/upstream/openvla-oft/vla-scripts/finetune.py");
    let Ok(source) = std::fs::read_to_string(path) else {
        return;
    };
    let caps = parse_source_fields(&source);
    for f in [
        "vla_path",
        "batch_size",
        "grad_accumulation_steps",
        "use_film",
        "lora_rank",
    ] {
        assert!(caps.accepts(f), "{f} missing: {:?}", caps.flags);
    }
    assert!(!caps.accepts("use_fsdp") && !caps.accepts("gradient_checkpointing"));
}

fn crash() -> Captured {
    Captured {
        exit_code: Some(1),
        stdout: String::new(),
        stderr: "Traceback (most recent call last):\nValueError: unsupported format character 't' (0x74) at index 40\n".into(),
    }
}

#[test]
fn a_crashing_help_falls_back_to_the_source_and_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("finetune.py");
    std::fs::write(&script, UPSTREAM_SOURCE).unwrap();
    let cache = dir.path().join("cache").join(CACHE_FILE);
    let runner = FakeRunner {
        help: Some(crash()),
        ..Default::default()
    };
    let python = Path::new("/env/bin/python");
    let ask = |r: &FakeRunner| {
        script_flags(
            r,
            python,
            &script,
            dir.path(),
            Duration::from_secs(5),
            Some(&cache),
        )
    };
    let a = ask(&runner).unwrap();
    assert_eq!(a.from, FlagsFrom::Source);
    assert!(!a.cached);
    assert!(a.caps.accepts("batch_size") && !a.caps.accepts("use_fsdp"));
    assert!(
        a.help_error
            .as_deref()
            .unwrap()
            .contains("unsupported format character")
    );
    assert_eq!(runner.calls.borrow().len(), 1);
    // Second time: from the cache, nothing run.
    let again = FakeRunner::default();
    let b = ask(&again).unwrap();
    assert!(b.cached && b.caps == a.caps && b.from == FlagsFrom::Source);
    assert!(again.calls.borrow().is_empty());
    // Another Python: asked again.
    let other = FakeRunner {
        help: Some(crash()),
        ..Default::default()
    };
    script_flags(
        &other,
        Path::new("/other/python"),
        &script,
        dir.path(),
        Duration::from_secs(5),
        Some(&cache),
    )
    .unwrap();
    assert_eq!(other.calls.borrow().len(), 1);
    // The script edited (size changes): asked again, and the new answer is read.
    std::fs::write(&script, fork_source()).unwrap();
    let edited = FakeRunner {
        help: Some(crash()),
        ..Default::default()
    };
    let c = ask(&edited).unwrap();
    assert_eq!(edited.calls.borrow().len(), 1);
    assert!(!c.cached && c.caps.accepts("use_fsdp"));
}

#[test]
fn timeouts_are_not_cached_and_a_help_answer_is() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("finetune.py");
    std::fs::write(&script, UPSTREAM_SOURCE).unwrap();
    let cache = dir.path().join(CACHE_FILE);
    let python = Path::new("/env/bin/python");
    let timeout = FakeRunner::default(); // no answer: a timeout
    let a = script_flags(
        &timeout,
        python,
        &script,
        dir.path(),
        Duration::from_secs(5),
        Some(&cache),
    )
    .unwrap();
    assert_eq!(a.from, FlagsFrom::Source);
    assert!(a.help_error.unwrap().contains("within 5 s"));
    assert!(!cache.exists());
    // Neither --help nor a dataclass: the error.
    let other = dir.path().join("train.py");
    std::fs::write(&other, "import argparse\n").unwrap();
    let e = script_flags(
        &timeout,
        python,
        &other,
        dir.path(),
        Duration::from_secs(5),
        Some(&cache),
    )
    .unwrap_err();
    assert!(e.to_string().contains("within 5 s"), "{e}");
    let help = FakeRunner {
        help: Some(Captured {
            exit_code: Some(0),
            stdout: "usage: finetune.py [-h] [--batch_size int] [--use_fsdp bool]\n".into(),
            stderr: String::new(),
        }),
        ..Default::default()
    };
    let a = script_flags(
        &help,
        python,
        &script,
        dir.path(),
        Duration::from_secs(5),
        Some(&cache),
    )
    .unwrap();
    assert_eq!(a.from, FlagsFrom::Help);
    let b = script_flags(
        &FakeRunner::default(),
        python,
        &script,
        dir.path(),
        Duration::from_secs(5),
        Some(&cache),
    )
    .unwrap();
    assert!(b.cached && b.caps.accepts("use_fsdp"));
    // A damaged cache is ignored, never fatal.
    std::fs::write(&cache, "{not json").unwrap();
    let c = script_flags(
        &timeout,
        python,
        &script,
        dir.path(),
        Duration::from_secs(5),
        Some(&cache),
    )
    .unwrap();
    assert!(!c.cached);
}

fn caps(flags: &[&str]) -> ScriptCaps {
    ScriptCaps {
        flags: flags.iter().map(|s| s.to_string()).collect(),
    }
}

fn both() -> Vec<String> {
    vec!["use_fsdp".into(), "gradient_checkpointing".into()]
}

#[test]
fn auto_runs_the_addition_only_when_the_script_lacks_a_wanted_flag() {
    let addition = Path::new("/v/share/vla-launch/scripts/finetune_fsdp.py");
    let upstream = caps(&["batch_size", "grad_accumulation_steps"]);
    let c = choose(
        FsdpAddition::Auto,
        &both(),
        Some(&upstream),
        Some(addition),
        "vla-scripts/finetune.py",
    )
    .unwrap();
    assert_eq!(
        c.run,
        ScriptRun::Addition {
            addition: addition.into()
        }
    );
    assert_eq!(c.accepts, both());
    assert!(!c.assumed);
    assert!(
        c.why
            .contains("--use_fsdp, --gradient_checkpointing, which the script lacks"),
        "{}",
        c.why
    );
    // The fork has both: the script itself.
    let fork = caps(&["batch_size", "use_fsdp", "gradient_checkpointing"]);
    let c = choose(
        FsdpAddition::Auto,
        &both(),
        Some(&fork),
        Some(addition),
        "f.py",
    )
    .unwrap();
    assert_eq!((c.run, c.accepts), (ScriptRun::Script, both()));
    // The real-code probe takes what its profile wants (checkpointing only): the script itself.
    let probe = caps(&["batch_size", "gradient_checkpointing"]);
    let c = choose(
        FsdpAddition::Auto,
        &["gradient_checkpointing".into()],
        Some(&probe),
        Some(addition),
        "p.py",
    )
    .unwrap();
    assert_eq!(c.run, ScriptRun::Script);
    // No addition installed: plan without what the script lacks, never with it.
    let c = choose(
        FsdpAddition::Auto,
        &both(),
        Some(&upstream),
        None,
        "vla-scripts/finetune.py",
    )
    .unwrap();
    assert_eq!(c.run, ScriptRun::Script);
    assert!(c.accepts.is_empty());
    assert!(
        c.why.contains("not installed") && c.why.contains("VLA_LAUNCH_DIR"),
        "{}",
        c.why
    );
    // A script with --use_fsdp but not checkpointing: the addition refuses such scripts.
    let c = choose(
        FsdpAddition::Auto,
        &both(),
        Some(&caps(&["use_fsdp"])),
        Some(addition),
        "f.py",
    )
    .unwrap();
    assert_eq!(
        (c.run, c.accepts),
        (ScriptRun::Script, vec!["use_fsdp".to_string()])
    );
}

#[test]
fn on_and_off() {
    let addition = Path::new("/a/finetune_fsdp.py");
    let upstream = caps(&["batch_size"]);
    let c = choose(
        FsdpAddition::Off,
        &both(),
        Some(&upstream),
        Some(addition),
        "f.py",
    )
    .unwrap();
    assert_eq!(c.run, ScriptRun::Script);
    assert!(c.accepts.is_empty() && c.why.contains("off"), "{}", c.why);
    let c = choose(
        FsdpAddition::On,
        &both(),
        Some(&upstream),
        Some(addition),
        "f.py",
    )
    .unwrap();
    assert_eq!(
        c.run,
        ScriptRun::Addition {
            addition: addition.into()
        }
    );
    let e = choose(FsdpAddition::On, &both(), Some(&upstream), None, "f.py").unwrap_err();
    assert!(e.contains("not installed") && e.contains("auto"), "{e}");
    let fork = caps(&["use_fsdp", "gradient_checkpointing"]);
    let e = choose(
        FsdpAddition::On,
        &both(),
        Some(&fork),
        Some(addition),
        "f.py",
    )
    .unwrap_err();
    assert!(e.contains("takes --use_fsdp itself"), "{e}");
}

#[test]
fn without_the_script_the_flags_are_assumed_and_said_so() {
    let c = choose(
        FsdpAddition::Auto,
        &both(),
        None,
        None,
        "vla-scripts/finetune.py",
    )
    .unwrap();
    assert!(c.assumed);
    assert_eq!((c.run, c.accepts.clone()), (ScriptRun::Script, both()));
    assert!(
        c.why.contains("assumed") && c.why.contains("--use_fsdp, --gradient_checkpointing"),
        "{}",
        c.why
    );
}

#[test]
fn the_addition_runs_only_for_plans_that_need_a_missing_flag() {
    let addition = Path::new("/a/finetune_fsdp.py");
    let upstream = caps(&["batch_size"]);
    let auto = choose(
        FsdpAddition::Auto,
        &both(),
        Some(&upstream),
        Some(addition),
        "f.py",
    )
    .unwrap();
    let ddp = for_plan(&auto, false, false, "f.py");
    assert_eq!(ddp.run, ScriptRun::Script);
    assert!(ddp.accepts.is_empty(), "{:?}", ddp.accepts);
    assert!(ddp.why.contains("itself"), "{}", ddp.why);
    for (fsdp, ckpt) in [(true, false), (false, true), (true, true)] {
        assert_eq!(for_plan(&auto, fsdp, ckpt, "f.py"), auto);
    }
    // A script with checkpointing but no FSDP: a DDP plan with checkpointing needs no addition.
    let ckpt_only = caps(&["gradient_checkpointing"]);
    let c = choose(
        FsdpAddition::Auto,
        &both(),
        Some(&ckpt_only),
        Some(addition),
        "f.py",
    )
    .unwrap();
    assert_eq!(for_plan(&c, false, true, "f.py").run, ScriptRun::Script);
    assert_eq!(
        for_plan(&c, false, true, "f.py").accepts,
        vec!["gradient_checkpointing".to_string()]
    );
    assert_eq!(for_plan(&c, true, true, "f.py"), c);
    // `on`: always.
    let on = choose(
        FsdpAddition::On,
        &both(),
        Some(&upstream),
        Some(addition),
        "f.py",
    )
    .unwrap();
    assert_eq!(for_plan(&on, false, false, "f.py"), on);
}

/// A script whose dataclass extends a config defined elsewhere (vla-launch's real-code probe
/// extends finetune.py's FinetuneConfig at run time) does not list its flags in its source: when
/// its `--help` fails, its few own fields must not pass for all its flags.
#[test]
fn a_source_whose_dataclass_extends_another_file_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("real_probe_finetune.py");
    std::fs::write(
        &script,
        "from dataclasses import dataclass\n\ndef probe_config_class(ft):\n    @dataclass\n    class ProbeConfig(ft.FinetuneConfig):\n        count_params_only: bool = False\n        gradient_checkpointing: bool = False\n    return ProbeConfig\n",
    )
    .unwrap();
    let runner = FakeRunner {
        help: Some(crash()),
        ..Default::default()
    };
    let r = script_flags(
        &runner,
        Path::new("/env/bin/python"),
        &script,
        dir.path(),
        Duration::from_secs(5),
        None,
    );
    assert!(r.is_err(), "{r:?}");
    // A base defined in the same file is read: its fields and the subclass's.
    let caps = parse_source_fields(
        "@dataclass\nclass Base:\n    a: int = 1\n\n@dataclass\nclass Cfg(Base):\n    b: int = 2\n",
    );
    assert!(caps.accepts("a") && caps.accepts("b"));
    assert_eq!(
        bases_defined_elsewhere(
            "@dataclass\nclass Cfg(Base):\n    b: int = 2\n@dataclass\nclass Base:\n    a: int = 1\n"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        bases_defined_elsewhere("@dataclass\nclass P(ft.FinetuneConfig):\n    b: int = 2\n"),
        vec!["ft.FinetuneConfig".to_string()]
    );
}

#[test]
fn a_script_that_is_here_but_unanswered_is_not_called_absent() {
    let c = choose(FsdpAddition::Auto, &both(), None, None, "probe.py")
        .unwrap()
        .unanswered("probe.py");
    assert!(c.assumed);
    assert!(!c.why.contains("not here"), "{}", c.why);
    assert!(
        c.why
            .starts_with("probe.py did not say which flags it takes"),
        "{}",
        c.why
    );
    assert!(
        c.why.contains("--use_fsdp, --gradient_checkpointing"),
        "{}",
        c.why
    );
}
