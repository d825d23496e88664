//! Issue 25: a replay fuzz. 1,000 tampered launch records per run (the program, every argument,
//! the variables, the directory, the profile fields, the plan fields); none may run anything the
//! profile and the recorded plan do not produce. The check (`app::replay_command`) runs
//! in-process for every record; the binary, with a fake torchrun that records what ran, for the
//! accepted ones and a sample of the refused ones (where nothing may run).
//!
//! The seed differs per run and is printed on failure (`VLA_REPLAY_FUZZ_SEED=N` repeats one).

use crate::common::{Rng, Vla, main_launch_record};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vla_launch::app::{ReplayCheck, replay_command};
use vla_launch::launch::command::{self, Inherited, LaunchCommand};
use vla_launch::record::PlanRecord;

const RECORDS: usize = 1000;
/// Refused records also given to the binary, to show the CLI takes the same path.
const REFUSED_THROUGH_BINARY: usize = 12;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fake() -> PathBuf {
    root().join("tests/fixtures/fake_torchrun")
}

/// The environment the fixture's launch had (the profile's placeholders).
fn launch_env() -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("VLA_DATA_ROOT", "/data".to_string()),
        ("VLA_RUN_ROOT", "/tmp/vla-fixture-run".to_string()),
        ("WANDB_ENTITY", "e".to_string()),
        ("WANDB_PROJECT", "p".to_string()),
        (
            "OPENVLA_OFT_DIR",
            root()
                .join("tests/fixtures/openvla-oft")
                .display()
                .to_string(),
        ),
    ])
}

/// main's launch record, moved to this checkout, without the `-- --run_id_note x` its launch
/// added: exactly what profile aloha and its plan produce.
fn base_record() -> Value {
    let mut v = main_launch_record();
    let argv = v["command"].as_array_mut().unwrap();
    argv.truncate(argv.len() - 2);
    v
}

const HOSTILE: &[&str] = &[
    "--no-python",
    "./evil.sh",
    "/tmp/evil.py",
    "-m",
    "--run-path",
    "--rdzv-endpoint",
    "evil.example:29500",
    "",
    "--vla_path",
    "/evil/model",
    "--resume_step",
    "True",
    "False",
    "0",
    "99",
    "--",
    "$(touch /tmp/pwn)",
    "vla-scripts/finetune.py ",
    "vla-scripts/../vla-scripts/finetune.py",
    "--standalone",
    "--nproc-per-node",
    "--batch_size=8",
    "***",
];

/// One mutation of `v`, described; None when it happened to change nothing.
fn tamper(v: &mut Value, rng: &mut Rng, evil_yaml: &Path) -> String {
    let argv_len = v["command"].as_array().unwrap().len();
    match rng.index(9) {
        0 => {
            let p = rng
                .pick(&[
                    "/bin/sh",
                    "./evil.sh",
                    "torchrun",
                    "fake_torchrun",
                    "/usr/bin/env",
                    "/tmp/fake_torchrun",
                    "",
                ])
                .to_string();
            let p = if rng.index(3) == 0 {
                format!("{}{}", fake().display(), rng.pick(&["x", " ", "/", ".py"]))
            } else {
                p
            };
            v["command"][0] = p.clone().into();
            format!("program = {p:?}")
        }
        1 | 2 => {
            // Every argument position is reached: the index is uniform over the argv.
            let i = 1 + rng.index(argv_len - 1);
            let argv = v["command"].as_array_mut().unwrap();
            let old = argv[i].as_str().unwrap().to_string();
            let new = match rng.index(5) {
                0 => rng.pick(HOSTILE).to_string(),
                1 => format!("{old}{}", rng.pick(&["x", " ", "0", "/", "=1"])),
                2 => old.to_uppercase(),
                3 => old.chars().skip(1).collect(),
                _ => format!("{}{old}", rng.pick(&["-", "./", " "])),
            };
            argv[i] = new.clone().into();
            format!("argument {i}: {old:?} -> {new:?}")
        }
        3 => {
            let i = 1 + rng.index(argv_len - 1);
            let argv = v["command"].as_array_mut().unwrap();
            match rng.index(3) {
                0 => {
                    let old = argv.remove(i);
                    format!("argument {i} ({old}) removed")
                }
                1 => {
                    let new = rng.pick(HOSTILE).to_string();
                    argv.insert(i, new.clone().into());
                    format!("{new:?} inserted at {i}")
                }
                _ => {
                    let j = 1 + rng.index(argv_len - 1);
                    argv.swap(i, j);
                    format!("arguments {i} and {j} swapped")
                }
            }
        }
        4 => {
            let argv = v["command"].as_array_mut().unwrap();
            let n = 1 + rng.index(3);
            let added: Vec<String> = (0..n).map(|_| rng.pick(HOSTILE).to_string()).collect();
            argv.extend(added.iter().map(|a| Value::from(a.as_str())));
            format!("appended {added:?}")
        }
        5 => {
            let env = v["env"].as_object_mut().unwrap();
            let keys: Vec<String> = env.keys().cloned().collect();
            match rng.index(4) {
                0 => {
                    let k = *rng.pick(&[
                        "BASH_ENV",
                        "LD_PRELOAD",
                        "LD_LIBRARY_PATH",
                        "PYTHONPATH",
                        "PYTHONSTARTUP",
                        "PATH",
                        "HF_TOKEN",
                        "TORCHELASTIC_ERROR_FILE",
                        "VLA_FINETUNE_SCRIPT",
                        "CUDA_VISIBLE_DEVICES",
                        "VLA_LAUNCH_VRAM_CAP_BYTES",
                    ]);
                    let val = *rng.pick(&["/tmp/evil", "***", "", "1", "0"]);
                    env.insert(k.into(), val.into());
                    format!("env {k}={val:?} added")
                }
                1 => {
                    let k = rng.pick(&keys).clone();
                    env.remove(&k);
                    format!("env {k} removed")
                }
                2 => {
                    let k = rng.pick(&keys).clone();
                    let val = rng.pick(&["/tmp/evil", "***", "", "2", "true", "x:y"]);
                    env.insert(k.clone(), (*val).into());
                    format!("env {k}={val:?}")
                }
                _ => {
                    let k = rng.pick(&keys).clone();
                    let val = env.remove(&k).unwrap();
                    let renamed = format!("{k}{}", rng.pick(&["_", "X", "1"]));
                    env.insert(renamed.clone(), val);
                    format!("env {k} renamed {renamed}")
                }
            }
        }
        6 => {
            let workdir = root().join("tests/fixtures/openvla-oft");
            let cwd = match rng.index(5) {
                0 => "/tmp".to_string(),
                1 => root().join("tests/fixtures").display().to_string(),
                2 => ".".to_string(),
                3 => format!("{}/..", workdir.display()),
                _ => evil_yaml.parent().unwrap().display().to_string(),
            };
            v["cwd"] = cwd.clone().into();
            format!("cwd = {cwd:?}")
        }
        7 => {
            let evil = evil_yaml.display().to_string();
            match rng.index(6) {
                0 => v["profile"] = evil.clone().into(),
                1 => v["profile"] = "aloha.yaml".into(),
                2 => v["profile"] = "../launch-profiles/aloha".into(),
                3 => v["profile"] = "libero".into(),
                4 => v["profile"] = "".into(),
                _ => v["profile"] = "launch-profiles/aloha.yaml".into(),
            }
            if rng.index(2) == 0 {
                v["profile_origin"] = json!({"kind": "file", "path": evil});
            }
            format!(
                "profile = {}, origin = {}",
                v["profile"], v["profile_origin"]
            )
        }
        _ => {
            let (field, value) = match rng.index(9) {
                0 => ("batch_size", json!(16)),
                1 => ("grad_accumulation_steps", json!(2)),
                2 => ("nproc_per_node", json!(1)),
                3 => ("strategy", json!("fsdp")),
                4 => ("gradient_checkpointing", json!(false)),
                5 => ("script_accepts", json!([])),
                6 => (
                    "script_run",
                    json!({"runs": "/tmp/evil.py", "addition": true, "script": "/tmp/evil.py", "assumed": false, "why": ""}),
                ),
                7 => ("nnodes", json!(2)),
                _ => (
                    "topology",
                    json!({"nnodes": 2, "node_rank": 1, "rendezvous": {"backend": "c10d", "endpoint": "evil.example:29500", "id": "x"}, "slurm_gpus_on_node": null, "slurm_job_id": null, "slurm_step_gpus": null, "source": "single node"}),
                ),
            };
            v[field] = value.clone();
            format!("{field} = {value}")
        }
    }
}

fn check<'a>(
    env: &'a dyn Fn(&str) -> Option<String>,
    inherited: &'a Inherited,
    torchrun: &'a Path,
) -> ReplayCheck<'a> {
    ReplayCheck {
        profile: None,
        torchrun: Some(torchrun),
        config_dir: None,
        env,
        inherited,
        addition: None,
    }
}

fn bin(dir: &Path) -> Vla {
    let mut c = Vla::new();
    c.env_remove("VLA_LAUNCH_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("SLURM_JOB_ID")
        .env_remove("BASH_ENV")
        .env_remove("HF_TOKEN")
        .env_remove("OMP_NUM_THREADS")
        .env_remove("PYTORCH_CUDA_ALLOC_CONF")
        .env_remove("WANDB_MODE")
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("RUST_LOG", "vla_launch=warn")
        .env("FAKE_RECORD", dir.join("seen.json"))
        .current_dir(root());
    for (k, v) in launch_env() {
        c.env(k, v);
    }
    c
}

/// What the fake torchrun saw, as a command (OMP_NUM_THREADS left out: it is the host's).
fn seen(dir: &Path) -> Option<(Vec<String>, BTreeMap<String, String>, PathBuf)> {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("seen.json")).ok()?).unwrap();
    let argv = serde_json::from_value(v["argv"].clone()).unwrap();
    let env: BTreeMap<String, String> = serde_json::from_value(v["env"].clone()).unwrap();
    Some((argv, env, PathBuf::from(v["cwd"].as_str().unwrap())))
}

fn assert_ran_expected(dir: &Path, expected: &LaunchCommand, what: &str) {
    let (argv, env, cwd) = seen(dir).unwrap_or_else(|| panic!("{what}: the fake did not run"));
    let want: Vec<String> = expected
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(argv, want, "{what}: ran other arguments");
    for (k, v) in &expected.env {
        if k != command::ENV_OMP_THREADS {
            assert_eq!(env.get(k), Some(v), "{what}: {k}");
        }
    }
    for k in ["BASH_ENV", "LD_PRELOAD", "PYTHONSTARTUP", "PYTHONPATH"] {
        assert!(!env.contains_key(k), "{what}: {k} reached torchrun");
    }
    assert_eq!(
        cwd.canonicalize().unwrap(),
        expected.cwd.canonicalize().unwrap(),
        "{what}"
    );
}

#[test]
fn a_thousand_tampered_records_run_nothing_the_profile_and_plan_do_not_produce() {
    let seed: u64 = std::env::var("VLA_REPLAY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let dir = tempfile::tempdir().unwrap();
    let evil_yaml = dir.path().join("evil.yaml");
    std::fs::write(
        &evil_yaml,
        std::fs::read_to_string(root().join("launch-profiles/aloha.yaml"))
            .unwrap()
            .replace("torchrun: torchrun", "torchrun: /bin/sh"),
    )
    .unwrap();
    let vars = launch_env();
    let env = move |k: &str| vars.get(k).cloned();
    // 2 CPUs for 2 ranks: the fixture's OMP_NUM_THREADS=1.
    let inherited = Inherited {
        vars: BTreeMap::new(),
        cpus: 2,
    };
    let torchrun = fake();
    let cx = check(&env, &inherited, &torchrun);
    let base = base_record();
    let rec: PlanRecord = serde_json::from_value(base.clone()).unwrap();
    let expected = replay_command(&rec, &cx).expect("the untampered record replays");

    let mut rng = Rng(seed);
    let (mut refused, mut unparsed) = (0, 0);
    let mut accepted = Vec::new();
    let mut refused_sample = Vec::new();
    let mut made = 0;
    while made < RECORDS {
        let mut v = base.clone();
        let what = tamper(&mut v, &mut rng, &evil_yaml);
        if v == base {
            continue; // a mutation that changed nothing is not a tampered record
        }
        made += 1;
        let Ok(rec) = serde_json::from_value::<PlanRecord>(v.clone()) else {
            unparsed += 1;
            continue;
        };
        match replay_command(&rec, &cx) {
            Ok(cmd) => {
                // Accepted only where the tampering changed nothing that runs.
                assert_eq!(
                    cmd, expected,
                    "seed {seed}: {what}: accepted, and it would run another command"
                );
                accepted.push((what, v));
            }
            Err(r) => {
                assert!(
                    r.0.len() < 600 && !r.0.contains('\n'),
                    "seed {seed}: {what}: {}",
                    r.0
                );
                refused += 1;
                if refused_sample.len() < REFUSED_THROUGH_BINARY && rng.index(20) == 0 {
                    refused_sample.push((what, v));
                }
            }
        }
    }
    assert_eq!(refused + unparsed + accepted.len(), RECORDS);
    // Most tamperings change what would run; the accepted few are equivalent spellings (a
    // program path with a trailing `/`, another host's OMP_NUM_THREADS).
    assert!(
        refused > RECORDS * 9 / 10,
        "seed {seed}: only {refused} of {RECORDS} refused"
    );

    let path = dir.path().join("plan-1.json");
    let torchrun_arg = ["--torchrun", torchrun.to_str().unwrap()];
    // The binary's replay of record `v`: its exit code and stderr (`seen.json` cleared first).
    let replay = |v: &Value| {
        std::fs::write(&path, v.to_string()).unwrap();
        let _ = std::fs::remove_file(dir.path().join("seen.json"));
        let out = bin(dir.path())
            .arg("replay")
            .arg(&path)
            .args(torchrun_arg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (what, v) in &refused_sample {
        let (code, e) = replay(v);
        assert_eq!(code, Some(2), "seed {seed}: {what}: {e}");
        assert!(
            seen(dir.path()).is_none(),
            "seed {seed}: {what}: refused in-process, but the binary ran it"
        );
        assert!(e.contains("--trust-record"), "{e}");
    }
    for (what, v) in accepted.iter().chain([&("untampered".to_string(), base)]) {
        let (code, e) = replay(v);
        assert_eq!(code, Some(0), "seed {seed}: {what}: {e}");
        assert_ran_expected(dir.path(), &expected, &format!("seed {seed}: {what}"));
    }
    eprintln!(
        "replay fuzz, seed {seed}: {RECORDS} tampered records: {refused} refused, {unparsed} unreadable, {} accepted (each ran exactly the profile's command), {} refused ones given to the binary",
        accepted.len(),
        refused_sample.len()
    );
}
