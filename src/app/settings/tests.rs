//! `resolve` is pure: the command line, a profile and an environment given as values, no
//! process, file or network.

use std::collections::{BTreeMap, HashMap};

use super::resolve::{HostRamSource, Settings, resolve};
use crate::budget::{Allocator, Strategy};
use crate::cli::{PlanningArgs, StrategyArg, Toggle};
use crate::launch::command::Inherited;
use crate::profile::{self, BUILTIN, Loaded, Origin, ScriptArgs};

fn builtin(name: &str) -> Loaded {
    let text = BUILTIN.iter().find(|(n, _)| *n == name).unwrap().1;
    Loaded {
        name: name.into(),
        origin: Origin::BuiltIn,
        profile: profile::parse(text, name).unwrap(),
    }
}

fn words(w: &[&str]) -> ScriptArgs {
    ScriptArgs::parse(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

fn inherited(vars: &[(&str, &str)]) -> Inherited {
    Inherited {
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        cpus: 8,
    }
}

/// Settles `args` for the built-in profile `name` in the environment `env`.
fn settle(
    name: &str,
    args: &PlanningArgs,
    extra: &[&str],
    env: &[(&str, &str)],
    plan_only: bool,
) -> super::Result<Settings> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |k: &str| env.get(k).cloned();
    resolve(
        args,
        words(extra),
        builtin(name),
        &lookup,
        &inherited(&[]),
        plan_only,
    )
}

#[test]
fn the_profile_flags_and_environment_settle_into_one_value() {
    let args = PlanningArgs {
        gpus: Some("4xrtx4090".into()),
        global_batch: Some(32),
        strategy: StrategyArg::Fsdp,
        checkpointing: Toggle::On,
        vram_cap: Some("20GiB".into()),
        ..PlanningArgs::default()
    };
    let s = settle(
        "aloha",
        &args,
        &["--max_steps", "7"],
        &[("VLA_DATA_ROOT", "/data"), ("OPENVLA_OFT_DIR", "/co")],
        false,
    )
    .unwrap();
    assert_eq!(s.resolved.workdir.value, "/co");
    assert!(
        s.resolved
            .flags
            .flags
            .contains(&("--data_root_dir".into(), "/data".into())),
        "{:?}",
        s.resolved.flags.flags
    );
    assert_eq!(s.pins.strategy, Some(Strategy::Fsdp));
    assert_eq!(s.pins.checkpointing, Some(true));
    assert_eq!((s.min_global_batch, s.exact_global_batch), (32, true));
    assert_eq!(s.vram_cap(), Some(20 << 30));
    // Described GPUs: this machine's RAM says nothing about theirs.
    assert_eq!(s.host_ram, HostRamSource::Unknown);
    assert_eq!(s.script_args.max_steps(), Some(7));
    assert_eq!(s.topology.nnodes, 1);
    assert_eq!(s.spec.num_images, 3);
    assert_eq!(s.alloc_conf.allocator(), Allocator::ExpandableSegments);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn the_host_ram_is_given_or_this_machines() {
    let given = PlanningArgs {
        host_ram: Some("64GiB".into()),
        ..PlanningArgs::default()
    };
    let s = settle("libero", &given, &[], &[], false).unwrap();
    assert_eq!(s.host_ram, HostRamSource::Given(64 << 30));
    let s = settle("libero", &PlanningArgs::default(), &[], &[], false).unwrap();
    assert_eq!(s.host_ram, HostRamSource::ThisMachine);
}

#[test]
fn a_slurm_job_gives_the_topology() {
    let env = [
        ("SLURM_JOB_ID", "113"),
        ("SLURM_NNODES", "2"),
        ("SLURM_NODEID", "1"),
        ("SLURM_JOB_NODELIST", "node[1-2]"),
    ];
    let s = settle("aloha", &PlanningArgs::default(), &[], &env, false).unwrap();
    assert_eq!((s.topology.nnodes, s.topology.node_rank), (2, 1));
}

#[test]
fn a_multi_node_plan_from_a_login_node_is_taken_as_node_0_only_when_planning() {
    let args = PlanningArgs {
        nnodes: Some(2),
        ..PlanningArgs::default()
    };
    let s = settle("aloha", &args, &[], &[], true).unwrap();
    assert_eq!((s.topology.nnodes, s.topology.node_rank), (2, 0));
    assert!(
        s.warnings.iter().any(|w| w.contains("planning only")),
        "{:?}",
        s.warnings
    );
    assert!(settle("aloha", &args, &[], &[], false).is_err());
}

#[test]
fn the_platform_word_may_come_from_the_script_arguments() {
    let mut loaded = builtin("libero");
    loaded.profile.train.remove("dataset_name");
    let lookup = |_: &str| None;
    let settle_with = |extra: &[&str]| {
        resolve(
            &PlanningArgs::default(),
            words(extra),
            loaded.clone(),
            &lookup,
            &inherited(&[]),
            false,
        )
        .unwrap()
    };
    let no_word = |s: &Settings| s.warnings.iter().any(|w| w.contains("platform word"));
    let bare = settle_with(&[]);
    assert!(no_word(&bare), "{:?}", bare.warnings);
    let with = settle_with(&["--dataset_name", "libero_spatial_no_noops"]);
    assert!(!no_word(&with), "{:?}", with.warnings);
    assert_eq!((with.spec.action_chunk, with.spec.action_dim), (8, 7));
}

#[test]
fn bad_values_name_their_flag() {
    for (args, flag) in [
        (
            PlanningArgs {
                nproc: Some(0),
                ..PlanningArgs::default()
            },
            "--nproc 0",
        ),
        (
            PlanningArgs {
                vram_cap: Some("lots".into()),
                ..PlanningArgs::default()
            },
            "--vram-cap lots",
        ),
        (
            PlanningArgs {
                host_ram: Some("12".into()),
                ..PlanningArgs::default()
            },
            "--host-ram 12",
        ),
    ] {
        let e = settle("aloha", &args, &[], &[], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(flag), "{e}");
    }
}

#[test]
fn the_inherited_allocator_setting_is_the_launchers_unless_the_profile_sets_one() {
    let lookup = |_: &str| None;
    let s = resolve(
        &PlanningArgs::default(),
        words(&[]),
        builtin("aloha"),
        &lookup,
        &inherited(&[("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")]),
        false,
    )
    .unwrap();
    assert_eq!(s.alloc_conf.value, "max_split_size_mb:128");
    assert_eq!(s.alloc_conf.allocator(), Allocator::Default);
}
