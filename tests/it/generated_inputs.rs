//! Issue 14: generated hostile inputs through the library's parsing and validation entry points
//! (profiles, `--set`, `--gpus`, numeric flags, plan files, run records), not by spawning
//! processes. Every input must be answered (accepted or refused) without a panic, each within
//! `PER_INPUT_LIMIT` of CPU time (measured one by one). Deterministic: the seed is fixed
//! (VLA_FUZZ_SEED changes it, VLA_FUZZ_INPUTS the count, e.g. for a longer run by hand).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches};
use vla_launch::cli::{Cli, PlanningArgs};
use vla_launch::launch::command::{CommandSpec, Inherited};
use vla_launch::{app, cluster, gpu, profile, record};

const PER_INPUT_LIMIT: Duration = Duration::from_secs(2);
/// Inputs per CI run (the acceptance asks for at least 10,000).
const DEFAULT_INPUTS: usize = 12_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Fragments that have broken parsers before, or could.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    ":",
    ": ",
    "- ",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\0",
    "'",
    "\"",
    "#",
    "&a ",
    "*a",
    "!!binary ",
    "!!str ",
    "? ",
    "|",
    ">",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "-1",
    "0",
    "4294967296",
    "18446744073709551616",
    "1e309",
    "NaN",
    ".inf",
    "-0",
    "0x10",
    "true",
    "null",
    "~",
    "${",
    "}",
    "${HF_TOKEN}",
    "${A:-b}",
    "=",
    ",",
    "x",
    "8x",
    "h100",
    "24GiB",
    "GB",
    "1xh100,",
    "é",
    "\u{202e}",
    "\u{feff}",
    "\\",
    "\\0",
    "..",
    "/",
    "--",
    "--batch_size",
    "env.",
    "train.",
    "script.",
];

fn token(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => "[".repeat(rng.below(200)),
        1 => "a".repeat(rng.below(5000)),
        2 => (0..rng.below(8))
            .map(|_| (rng.below(256) as u8) as char)
            .collect(),
        _ => rng.pick(TOKENS).to_string(),
    }
}

/// Byte- and token-level mutations of `seed`, kept valid UTF-8 (the readers take text).
fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut s: Vec<char> = seed.chars().collect();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(s.len() + 1);
        match rng.below(7) {
            0 if !s.is_empty() => {
                let end = (at + rng.below(64)).min(s.len());
                s.drain(at.min(end)..end);
            }
            1 if !s.is_empty() => {
                let i = rng.below(s.len());
                s[i] = char::from_u32(rng.below(0x3000) as u32).unwrap_or('?');
            }
            2 if !s.is_empty() => {
                // Duplicate a region (deep repetition).
                let start = rng.below(s.len());
                let end = (start + rng.below(200)).min(s.len());
                let chunk: Vec<char> = s[start..end].to_vec();
                for _ in 0..rng.below(20) {
                    s.splice(at..at, chunk.iter().copied());
                }
            }
            3 => s.truncate(at),
            _ => {
                let t = token(rng);
                s.splice(at..at, t.chars());
            }
        }
    }
    s.into_iter().collect()
}

/// A JSON value to put where a record field was.
fn json_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(14) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(0),
        3 => json!(4294967296u64),
        4 => json!(u64::MAX),
        5 => json!(1e300),
        6 => json!(-0.5),
        7 => json!(token(rng)),
        8 => json!([]),
        9 => json!({}),
        10 => json!([token(rng), 1, null]),
        11 => json!(true),
        12 => json!({"a": [[[[[1]]]]]}),
        _ => json!(rng.below(100)),
    }
}

fn mutate_json(rng: &mut Rng, seed: &serde_json::Value) -> String {
    let mut v = seed.clone();
    for _ in 0..1 + rng.below(4) {
        let Some(obj) = v.as_object_mut() else { break };
        let keys: Vec<String> = obj.keys().cloned().collect();
        match rng.below(4) {
            0 => {
                let k = rng.pick(&keys).clone();
                obj.remove(&k);
            }
            1 => {
                let k = rng.pick(&keys).clone();
                // Inside a nested value sometimes.
                match obj.get_mut(&k) {
                    Some(serde_json::Value::Object(inner)) if !inner.is_empty() => {
                        let ik: Vec<String> = inner.keys().cloned().collect();
                        let ik = rng.pick(&ik).clone();
                        inner.insert(ik, json_value(rng));
                    }
                    Some(serde_json::Value::Array(items)) if !items.is_empty() => {
                        let i = rng.below(items.len());
                        items[i] = json_value(rng);
                    }
                    _ => {
                        obj.insert(k, json_value(rng));
                    }
                }
            }
            2 => {
                obj.insert(token(rng), json_value(rng));
            }
            _ => {
                let k = rng.pick(&keys).clone();
                obj.insert(k, json_value(rng));
            }
        }
    }
    let text = v.to_string();
    if rng.chance(30) {
        mutate(rng, &text)
    } else {
        text
    }
}

fn gpus_spec(rng: &mut Rng) -> String {
    const PARTS: &[&str] = &[
        "1xh100",
        "8xh100",
        "4x24GiB",
        "2x80GB",
        "4xrtx4090",
        "1xa100-40gb",
        "0xh100",
        "-1xh100",
        "4294967296xh100",
        "1x0GiB",
        "1x18446744073709551615GiB",
        "1x1e9GiB",
        "x",
        "1x",
        "h100",
        "1xH100",
        "1x24gib",
        "3x1.5GiB",
        "1x24 GiB",
        "",
        "1xh100x2",
    ];
    let n = 1 + rng.below(4);
    let s: Vec<String> = (0..n).map(|_| rng.pick(PARTS).to_string()).collect();
    let s = s.join(",");
    if rng.chance(40) { mutate(rng, &s) } else { s }
}

fn set_arg(rng: &mut Rng) -> String {
    const KEYS: &[&str] = &[
        "train.max_steps",
        "train.lora_rank",
        "train.batch_size",
        "train.use_film",
        "train.run_id_note",
        "train.num_images_in_input",
        "train.learning_rate",
        "env.X",
        "env.A;B",
        "env.HF_TOKEN",
        "script.path",
        "script.workdir",
        "script.torchrun",
        "script.accepts",
        "model.preset",
        "model.prompt_tokens",
        "model.platform",
        "planning.min_global_batch",
        "planning.max_batch_size",
        "planning.margin_fraction",
        "planning.strategies",
        "planning.batch_size",
        "description",
        "x.y.z",
        "train",
        "",
        "train..x",
    ];
    const VALUES: &[&str] = &[
        "1",
        "0",
        "-1",
        "4294967296",
        "1e400",
        "true",
        "[1, 2]",
        "{a: 1}",
        "[[[[",
        "null",
        "~",
        "''",
        "ddp",
        "[fsdp]",
        "0.5",
        "aloha",
        "${HF_TOKEN}",
        "a\0b",
        "&a [*a, *a]",
    ];
    let key = rng.pick(KEYS).to_string();
    let value = if rng.chance(20) {
        token(rng)
    } else {
        rng.pick(VALUES).to_string()
    };
    let s = if rng.chance(5) {
        key
    } else {
        format!("{key}={value}")
    };
    if rng.chance(20) { mutate(rng, &s) } else { s }
}

fn number_flags(rng: &mut Rng) -> Vec<String> {
    const FLAGS: &[&str] = &[
        "--batch-size",
        "--grad-accum",
        "--nproc",
        "--global-batch",
        "--nnodes",
        "--node-rank",
        "--grace",
        "--hang-minutes",
        "--oom-retries",
        "--rdzv-port",
        "--record-mode",
    ];
    const VALUES: &[&str] = &[
        "-1",
        "0",
        "1",
        "16",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "1.5",
        "",
        " 2",
        "0x10",
        "+3",
        "--",
        "-",
        "0600",
        "0777",
        "abc",
    ];
    let mut argv = vec!["vla-launch".to_string()];
    for _ in 0..1 + rng.below(4) {
        argv.push(rng.pick(FLAGS).to_string());
        argv.push(if rng.chance(15) {
            token(rng)
        } else {
            rng.pick(VALUES).to_string()
        });
    }
    argv
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

#[test]
fn generated_hostile_inputs_never_panic_and_each_is_answered_within_2_s() {
    let seed: u64 = std::env::var("VLA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x14_14_14);
    let inputs: usize = std::env::var("VLA_FUZZ_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_INPUTS);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let profiles: Vec<String> = profile::BUILTIN
        .iter()
        .map(|(_, t)| t.to_string())
        .collect();
    // The `set` inputs start from a shipped profile as it parses (the same few texts each time:
    // the `profile` inputs are the ones that exercise the parser), and the `flags` inputs go
    // through the CLI's command as `Cli::try_parse_from` builds it, built once.
    let parsed: Vec<profile::Profile> = profiles
        .iter()
        .map(|t| profile::parse(t, "builtin").unwrap())
        .collect();
    let mut cli = Cli::command();
    cli.build();
    let run_record: serde_json::Value = serde_json::from_str(&fixture(
        "tests/fixtures/records/main-f32ef0c-run-plan-1795850263.json",
    ))
    .unwrap();
    let plan_o: serde_json::Value =
        serde_json::from_str(&fixture("tests/fixtures/records/main-f32ef0c-plan-o.json")).unwrap();
    let fake_env = |name: &str| match name {
        "HF_TOKEN" => Some("hf_generated".to_string()),
        "OPENVLA_OFT_DIR" => Some("/w".to_string()),
        _ => None,
    };

    let kinds = [
        "profile",
        "set",
        "gpus",
        "flags",
        "plan-file",
        "record",
        "hostlist",
    ];
    let mut panics: Vec<String> = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut accepted = [0usize; 7];
    let mut counts = [0usize; 7];
    let started = Instant::now();
    for i in 0..inputs {
        let kind = i % kinds.len();
        counts[kind] += 1;
        // The input, built before the clock starts.
        let (input, job): (String, Box<dyn FnOnce() -> bool>) = match kind {
            0 => {
                let seed = rng_pick_clone(&mut rng, &profiles);
                let text = if rng.chance(50) {
                    replace_values(&mut rng, &seed)
                } else {
                    mutate(&mut rng, &seed)
                };
                let sets: Vec<String> = (0..rng.below(3)).map(|_| set_arg(&mut rng)).collect();
                let extra: Vec<String> = (0..rng.below(3)).map(|_| token(&mut rng)).collect();
                let shown = text.clone();
                (
                    shown,
                    Box::new(move || {
                        let Ok(p) = profile::parse(&text, "gen.yaml") else {
                            return false;
                        };
                        let mut loaded = profile::Loaded {
                            name: "gen".into(),
                            origin: profile::Origin::BuiltIn,
                            profile: p,
                        };
                        if profile::apply_overrides(&mut loaded, &sets).is_err() {
                            return false;
                        }
                        let r = loaded.resolve(&fake_env);
                        if let Ok(extra) = profile::ScriptArgs::parse(&extra) {
                            let _ = profile::model_spec(&loaded.profile, &extra);
                            let _ = profile::platform_of(&loaded.profile, &extra);
                        }
                        build_command(&r);
                        true
                    }),
                )
            }
            1 => {
                let parsed = rng.pick(&parsed).clone();
                let sets: Vec<String> = (0..1 + rng.below(4)).map(|_| set_arg(&mut rng)).collect();
                (
                    format!("{sets:?}"),
                    Box::new(move || {
                        let mut loaded = profile::Loaded {
                            name: "gen".into(),
                            origin: profile::Origin::BuiltIn,
                            profile: parsed,
                        };
                        let ok = profile::apply_overrides(&mut loaded, &sets).is_ok();
                        if ok {
                            build_command(&loaded.resolve(&fake_env));
                        }
                        ok
                    }),
                )
            }
            2 => {
                let spec = gpus_spec(&mut rng);
                (
                    spec.clone(),
                    Box::new(move || gpu::parse_gpus_spec(&spec).is_ok()),
                )
            }
            3 => {
                let argv = number_flags(&mut rng);
                let mut cli = cli.clone();
                (
                    format!("{argv:?}"),
                    Box::new(move || {
                        cli.try_get_matches_from_mut(&argv)
                            .is_ok_and(|mut m| Cli::from_arg_matches_mut(&mut m).is_ok())
                    }),
                )
            }
            4 => {
                let text = mutate_json(&mut rng, &plan_o);
                let path = dir.path().join(format!("plan-{i}.json"));
                std::fs::write(&path, &text).unwrap();
                (
                    text,
                    Box::new(move || {
                        let ok = app::pin_to_plan_file(&mut PlanningArgs::default(), &path).is_ok();
                        let _ = std::fs::remove_file(&path);
                        ok
                    }),
                )
            }
            5 => {
                let text = mutate_json(&mut rng, &run_record);
                (
                    text.clone(),
                    Box::new(move || {
                        let path = PathBuf::from("/r/plan-1795850263.json");
                        let Ok(rec) = record::parse(&text, &path) else {
                            return false;
                        };
                        let _ = rec.argv(&path);
                        let _ = rec.redacted();
                        let _ = rec.replay_env(&path, &fake_env);
                        let _ = rec.model_peak();
                        let _ =
                            record::observations(&rec, &path, vla_launch::calibration::Source::Run);
                        let _ = rec.to_json_pretty();
                        true
                    }),
                )
            }
            _ => {
                let list = mutate(&mut rng, "gpu-node[001-004,7],login[1-2]");
                (
                    list.clone(),
                    Box::new(move || cluster::parse_hostlist(&list).is_ok()),
                )
            }
        };
        // CPU time, not wall time: the same bound on an idle machine and a busy one (issue 26).
        let (result, took) = crate::cpu_time::measured(|| catch_unwind(AssertUnwindSafe(job)));
        let excerpt: String = input.chars().take(300).collect();
        match result {
            Ok(ok) => accepted[kind] += ok as usize,
            Err(_) => panics.push(format!("{} input {i}: {excerpt:?}", kinds[kind])),
        }
        assert!(
            took <= PER_INPUT_LIMIT,
            "{} input {i} took {took:?} of CPU time (limit {PER_INPUT_LIMIT:?}): {excerpt:?}",
            kinds[kind]
        );
        if took > slowest.0 {
            slowest = (took, format!("{} input {i}", kinds[kind]));
        }
    }
    let summary: Vec<String> = kinds
        .iter()
        .zip(counts.iter().zip(accepted))
        .map(|(k, (n, a))| format!("{k}: {n} ({a} accepted)"))
        .collect();
    eprintln!(
        "{inputs} generated inputs in {:?}; slowest {:?} ({}); {}",
        started.elapsed(),
        slowest.0,
        slowest.1,
        summary.join(", ")
    );
    assert!(inputs < DEFAULT_INPUTS || counts.iter().sum::<usize>() >= 10_000);
    assert!(
        panics.is_empty(),
        "{} panics:\n{}",
        panics.len(),
        panics.join("\n")
    );
    // Some of each kind must get through, or the generator tests only the first check.
    for (k, a) in kinds.iter().zip(accepted) {
        assert!(
            a > 0,
            "no generated {k} input was accepted: the generator is too destructive"
        );
    }
}

/// A profile with some values (what follows `key: ` on a line) replaced: still YAML, so the
/// validation behind the parser is reached.
fn replace_values(rng: &mut Rng, text: &str) -> String {
    const VALUES: &[&str] = &[
        "-1",
        "0",
        "4294967296",
        "1e400",
        "true",
        "[1, 2]",
        "{a: 1}",
        "null",
        "~",
        "''",
        "ddp",
        "[fsdp, ddp, ddp]",
        "0.5",
        "\"a\\0b\"",
        "\"${HF_TOKEN}\"",
        "&a x",
        "*a",
        "!!binary aGk=",
        "\"--batch_size\"",
        "[use_fsdp, bogus]",
        "1024",
        "1025",
        "3",
        "4",
        "aloha",
        "libero",
    ];
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(lines.len());
        if let Some(at) = lines[i].find(": ") {
            let value = if rng.chance(20) {
                token(rng)
            } else {
                rng.pick(VALUES).to_string()
            };
            lines[i] = format!("{}: {value}", &lines[i][..at]);
        }
    }
    lines.join("\n") + "\n"
}

fn rng_pick_clone(rng: &mut Rng, items: &[String]) -> String {
    rng.pick(items).clone()
}

/// A resolved profile through the command builder (env names and all).
fn build_command(r: &profile::Resolved) {
    let spec = CommandSpec {
        torchrun: r.torchrun.value.clone().into(),
        script: r.script.value.clone().into(),
        workdir: r.workdir.value.clone().into(),
        nproc_per_node: 1,
        topology: vla_launch::cluster::Topology::single_node(),
        max_restarts: 0,
        script_flags: r.flags.flags.clone(),
        extra_args: vec![],
        env: r
            .env
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect(),
        cuda_visible_devices: None,
        vram_cap_bytes: None,
        ranks_filter: None,
        torchrun_log_dir: None,
    };
    if let Ok(cmd) = vla_launch::launch::command::build(&spec, &Inherited::default()) {
        let _ = vla_launch::launch::command::display(&cmd);
    }
}
