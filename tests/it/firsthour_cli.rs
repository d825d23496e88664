//! Issue 17 items 3-7, 9-10 and `--profile` did-you-mean, through the real binary: each test
//! names the item it covers and failed on the code before the change it checks.

use crate::common::{Ran, Vla, WithoutAmbient};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Vla {
    let mut c = Vla::new();
    c.without_ambient_topology()
        .env_remove("PYTORCH_CUDA_ALLOC_CONF")
        .env_remove("VLA_DATA_ROOT")
        .env_remove("VLA_RUN_ROOT")
        .env_remove("WANDB_ENTITY")
        .env_remove("WANDB_PROJECT")
        .env_remove("WANDB_MODE")
        .env_remove("NO_COLOR")
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("OPENVLA_OFT_DIR", root().join("tests/fixtures/openvla-oft"))
        .env("RUST_LOG", "vla_launch=warn")
        .current_dir(root());
    c
}

fn run(args: &[&str]) -> Ran {
    bin().args(args).run()
}

fn plan_4090() -> Ran {
    run(&["plan", "--profile", "aloha", "--gpus", "4xrtx4090"])
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vla-firsthour-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---- item 3: the headline memory line

/// The memory line leads with what must fit against what is usable; the nvidia-smi peak (larger
/// than the card here) is never on a line that ends "fits", and the cache is explained once.
#[test]
fn memory_line_leads_with_what_must_fit() {
    let r = plan_4090();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("memory"))
        .expect("a memory line");
    assert!(
        line.contains("memory         needs 20.91 GiB of 22.32 GiB usable per GPU"),
        "{line}"
    );
    assert!(line.contains("fits"), "{line}");
    assert!(
        !line.contains("29.67"),
        "the peak above the card is not on the verdict line: {line}"
    );
    for l in r.stdout.lines().filter(|l| l.contains("fits")) {
        assert!(!l.contains("29.67 GiB peak"), "{l}");
    }
    // nvidia-smi cannot show more than the card: with the allocator's full cache the peak
    // (29.67 GiB) would exceed it, so the cache line says the card, not the larger figure.
    let cache = r
        .stdout
        .lines()
        .find(|l| l.contains("allocator"))
        .expect("a cache line");
    assert!(!cache.contains("29.67"), "{cache}");
    assert!(
        cache.contains("nvidia-smi may show the whole card (23.99 GiB)")
            && cache.contains("8.81 GiB"),
        "{cache}"
    );
}

/// A --vram-cap at or above every GPU's memory emulates nothing: say so instead of "every GPU
/// treated as holding at most 200.00 GiB" on an 80 GB card.
#[test]
fn a_cap_above_the_card_is_called_out() {
    let capped = |cap| {
        run(&[
            "plan",
            "--profile",
            "aloha",
            "--gpus",
            "1xh100",
            "--vram-cap",
            cap,
        ])
    };
    let r = capped("200GiB");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "--vram-cap 200GiB is not below any GPU's memory (GPU 0: 79.65 GiB): it changes nothing"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("at most 200.00 GiB"), "{}", r.stderr);
    // A cap below the card still says what it does.
    let r = capped("24GiB");
    assert!(
        r.stderr
            .contains("every GPU treated as holding at most 24.00 GiB"),
        "{}",
        r.stderr
    );
}

// ---- item 4: total run time

#[test]
fn plan_gives_total_run_time_in_text_and_json() {
    let r = plan_4090();
    // 10.45 s x 100005 steps = 12.1 days, FSDP2 within 15% (10.3 to 13.9 days); the next best at
    // 17.58 s = 20.3 days.
    assert!(
        r.stdout.contains(
            "run time       about 12.1 days for 100005 steps (estimate, \u{b1}15%: 10.3 days to 13.9 days)"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("20.3 days"),
        "per alternative: {}",
        r.stdout
    );
    let j = run(&[
        "plan",
        "--profile",
        "aloha",
        "--gpus",
        "4xrtx4090",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    let total = v["predicted_run_time_s"]
        .as_f64()
        .expect("predicted_run_time_s");
    assert!((total / 86400.0 - 12.1).abs() < 0.06, "{total}");
    let alt = v["alternatives"][0]["predicted_run_time_s"]
        .as_f64()
        .expect("alternatives[0].predicted_run_time_s");
    assert!(alt > total, "{alt} vs {total}");
}

// ---- item 6: the printed command can be pasted

#[test]
fn printed_command_can_be_pasted() {
    let r = plan_4090();
    let cmd = r
        .stdout
        .lines()
        .skip_while(|l| *l != "Command:")
        .nth(1)
        .expect("a command")
        .trim()
        .to_string();
    assert!(!cmd.starts_with("cd . &&"), "{cmd}");
    assert!(
        cmd.contains(r#"--data_root_dir "${VLA_DATA_ROOT}""#),
        "{cmd}"
    );
    assert!(!cmd.contains("'${"), "{cmd}");
    // Pasted into bash with the variables set, the placeholders expand.
    let echoed = Command::new("bash")
        .arg("-c")
        .arg(format!("torchrun() {{ printf '%s\\n' \"$@\"; }}; {cmd}"))
        .env("VLA_DATA_ROOT", "/my data")
        .env("VLA_RUN_ROOT", "/runs")
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .output()
        .unwrap();
    let args = String::from_utf8_lossy(&echoed.stdout);
    assert!(args.contains("--data_root_dir\n/my data\n"), "{args}");
}

// ---- --profile did-you-mean

#[test]
fn misspelt_profile_gets_did_you_mean() {
    let r = run(&["plan", "--profile", "alhoa", "--gpus", "1xh100"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("did you mean aloha?"), "{}", r.stderr);
}

// ---- item 7: flags and conventions

#[test]
fn verbose_and_quiet_work_before_the_subcommand() {
    let r = run(&["-v", "profiles"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = run(&["-q", "plan", "--profile", "aloha", "--gpus", "1xh100"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = run(&["plan", "-q", "--profile", "aloha", "--gpus", "1xh100"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // A launch flag still conflicts with a subcommand.
    let r = run(&["--dry-run", "profiles"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
}

#[test]
fn quiet_hides_the_plan_and_verbose_adds_the_budget() {
    let dry = ["--profile", "aloha", "--gpus", "1xh100", "--dry-run"];
    let normal = run(&dry);
    assert_eq!(normal.code, Some(0), "{}", normal.stderr);
    assert!(
        normal.stderr.contains("Plan for profile"),
        "{}",
        normal.stderr
    );
    let mut q = vec!["-q"];
    q.extend(dry);
    let quiet = run(&q);
    assert_eq!(quiet.code, Some(0), "{}", quiet.stderr);
    assert!(
        !quiet.stderr.contains("Plan for profile"),
        "{}",
        quiet.stderr
    );
    assert!(
        quiet.stdout.contains("torchrun"),
        "the command stays: {}",
        quiet.stdout
    );
    let mut v = vec!["-v"];
    v.extend(dry);
    let verbose = run(&v);
    assert!(
        verbose.stderr.contains("Memory budget per GPU"),
        "{}",
        verbose.stderr
    );
}

#[test]
fn wandb_offline_does_not_need_entity_or_project() {
    let dir = temp_dir("wandb");
    let record = dir.join("argv.json");
    let base = |mode: Option<&str>| {
        let mut c = bin();
        c.args(["--profile", "aloha", "--gpus", "1xh100", "--log-dir"])
            .arg(dir.join("logs"))
            .arg("--torchrun")
            .arg(root().join("tests/fixtures/fake_torchrun"))
            .env("VLA_DATA_ROOT", "/data")
            .env("VLA_RUN_ROOT", &dir)
            .env("FAKE_RECORD", &record);
        if let Some(m) = mode {
            c.env("WANDB_MODE", m);
        }
        c.run()
    };
    let refused = base(None);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("WANDB_ENTITY"),
        "{}",
        refused.stderr
    );
    for mode in ["offline", "disabled"] {
        let r = base(Some(mode));
        assert_eq!(r.code, Some(0), "WANDB_MODE={mode}: {}", r.stderr);
        let argv = std::fs::read_to_string(&record).unwrap();
        assert!(
            !argv.contains("${WANDB"),
            "no placeholder reaches the script: {argv}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_list_profile_names() {
    for shell in ["bash", "zsh", "fish"] {
        let r = run(&["completions", shell]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert!(
            r.stdout.contains("aloha-probe"),
            "{shell}: no profile names"
        );
    }
}

#[test]
fn readme_names_every_shell_the_binary_supports() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(run(&["completions", shell]).code == Some(0), "{shell}");
        assert!(readme.contains(shell), "README does not name {shell}");
    }
}

#[test]
fn plan_help_is_not_wrapped_mid_command_on_a_wide_terminal() {
    // clap wraps only on a terminal, at 100 columns when it cannot tell the width (a pty that
    // reports no size, as under some multiplexers): run it on one 100 columns wide.
    let out = Command::new("script")
        .arg("-qec")
        .arg(format!(
            "stty rows 50 cols 100; '{}' plan --help",
            crate::common::BIN
        ))
        .arg("/dev/null")
        .env("NO_COLOR", "1")
        .env_remove("COLUMNS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.contains("Examples:"), "{text}");
    // Every example is one line starting with the program name, or continues one ending in `\`.
    let mut continued = false;
    for l in text
        .lines()
        .skip_while(|l| !l.starts_with("Examples:"))
        .skip(1)
    {
        if l.trim().is_empty() {
            continue;
        }
        assert!(
            continued || l.trim_start().starts_with("vla-launch plan"),
            "wrapped: {l:?}\n{text}"
        );
        continued = l.ends_with('\\');
    }
}

// ---- item 10: doctor and wording

#[test]
fn plan_help_says_what_platform_words_are() {
    let r = run(&["plan", "--help"]);
    let text = r.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("platform words"), "{}", r.stdout);
    assert!(
        text.contains("the first of libero, aloha or bridge"),
        "platform words explained: {}",
        r.stdout
    );
}

#[test]
fn nothing_fits_names_the_gpus_naturally() {
    let r = run(&["plan", "--profile", "aloha", "--gpus", "4x10GiB"]);
    assert_eq!(r.code, Some(3), "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(!all.contains("GPUs of GPU with"), "{all}");
    assert!(
        all.contains("on 4 GPUs with 10.00 GiB each (described)"),
        "{all}"
    );
}

#[test]
fn doctor_json_is_one_object_with_the_checks() {
    let r = run(&["doctor", "--profile", "aloha", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", r.stdout, r.stderr));
    let checks = v["checks"].as_array().expect("checks");
    assert!(
        checks
            .iter()
            .all(|c| c["name"].is_string() && c["ok"].is_boolean())
    );
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for want in ["dataset", "wandb", "base model", "checkpoint disk"] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "no {want} check: {names:?}"
        );
    }
}

#[test]
fn doctor_torchrun_hint_names_openvla_oft_dir() {
    let r = bin()
        .args(["doctor", "--profile", "aloha"])
        .env("PATH", "/nonexistent")
        .env("OPENVLA_OFT_DIR", "/nonexistent-oft")
        .run();
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("OPENVLA_OFT_DIR"), "{all}");
}

/// Item 6, for every byte: the pasted `display` line gives back the argv with each `${NAME}`
/// expanded by the pasting shell, and everything else exactly.
#[test]
fn displayed_command_expands_placeholders_and_keeps_every_other_byte() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use vla_launch::launch::command::{
        AllocConf, AllocConfSource, LaunchCommand, display_with_unset,
    };
    let dir = temp_dir("display");
    let dumper = dir.join("dump");
    std::fs::write(
        &dumper,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > \"$DUMP_DIR/args\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&dumper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut rng = crate::common::Rng(0x2545_F491_4F6C_DD1D);
    let mut next = move |n: u64| rng.below(n);
    const NASTY: &[u8] = b"'\"\\$`!;&|<>(){}[]*?~#= \t\n\x1b%-_/:{}";
    for case in 0..200 {
        let mut args = Vec::new();
        let mut want = Vec::new();
        for _ in 0..1 + next(4) {
            let (mut arg, mut exp) = (Vec::new(), Vec::new());
            for _ in 0..next(14) {
                match next(5) {
                    0 => {
                        let name = ["VA", "V_B", "x1"][next(3) as usize];
                        arg.extend_from_slice(format!("${{{name}}}").as_bytes());
                        exp.extend_from_slice(format!("<{name} $x>").as_bytes());
                    }
                    1 => {
                        let b = NASTY[next(NASTY.len() as u64) as usize];
                        arg.push(b);
                        exp.push(b);
                    }
                    _ => {
                        let b = 1 + next(255) as u8;
                        arg.push(b);
                        exp.push(b);
                    }
                }
            }
            args.push(OsString::from_vec(arg));
            want.push(exp);
        }
        let cmd = LaunchCommand {
            program: dumper.clone(),
            args,
            env: vec![("DUMP_DIR".into(), dir.to_string_lossy().into_owned())],
            cwd: ".".into(),
            alloc_conf: AllocConf {
                value: String::new(),
                source: AllocConfSource::Profile,
            },
        };
        // The three names stand for placeholders the plan left unset (issue 25 item 15: only
        // those expand).
        let unset: Vec<(String, String)> = ["VA", "V_B", "x1"]
            .iter()
            .map(|n| (format!("train.{n}"), n.to_string()))
            .collect();
        let line = display_with_unset(&cmd, &unset);
        assert!(!line.starts_with("cd "), "{line}");
        assert!(
            !line.bytes().any(|b| b < 0x20 || b == 0x7f),
            "case {case}: {line:?}"
        );
        let _ = std::fs::remove_file(dir.join("args"));
        let out = Command::new("bash")
            .args(["-c", &line])
            .current_dir(&dir)
            .env("VA", "<VA $x>")
            .env("V_B", "<V_B $x>")
            .env("x1", "<x1 $x>")
            .output()
            .unwrap();
        assert!(out.status.success(), "case {case}: {line:?}");
        let got = std::fs::read(dir.join("args")).unwrap();
        let mut got: Vec<Vec<u8>> = got.split(|&c| c == 0).map(<[u8]>::to_vec).collect();
        got.pop();
        assert_eq!(got, want, "case {case}: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 7: on a terminal the WARN lines are coloured unless NO_COLOR is set (no-color.org).
#[test]
fn no_color_turns_off_the_log_colours_on_a_terminal() {
    let on_pty = |no_color: Option<&str>| {
        let mut c = bin();
        c.arg("-qec")
            .arg(format!(
                "'{}' plan --profile aloha --gpus 1xh100",
                crate::common::BIN
            ))
            .arg("/dev/null");
        let mut c2 = Command::new("script");
        c2.args(c.command().get_args());
        for (k, v) in c.command().get_envs() {
            match v {
                Some(v) => c2.env(k, v),
                None => c2.env_remove(k),
            };
        }
        c2.current_dir(root());
        if let Some(v) = no_color {
            c2.env("NO_COLOR", v);
        }
        String::from_utf8_lossy(&c2.output().unwrap().stdout).into_owned()
    };
    let coloured = on_pty(None);
    assert!(coloured.contains("WARN"), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "colour on a terminal: {coloured:?}"
    );
    let plain = on_pty(Some("1"));
    assert!(plain.contains("WARN"), "{plain}");
    assert!(!plain.contains("\x1b["), "NO_COLOR=1: {plain:?}");
}

/// Item 10: after an OOM with checkpointing and FSDP both on, the hint does not suggest them.
#[test]
fn oom_hint_does_not_suggest_what_is_already_on() {
    let dir = temp_dir("oomhint");
    let oom = "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.12 GiB memory in use. Of the allocated memory 75.80 GiB is allocated by PyTorch, and 0.21 GiB is reserved by PyTorch but unallocated.\n";
    let hint = |strategy: &str, ckpt: &str| {
        let r = bin()
            .args([
                "--profile",
                "aloha",
                "--gpus",
                "2xh100",
                "--oom-retries",
                "0",
            ])
            .args(["--strategy", strategy, "--checkpointing", ckpt])
            .args(["--batch-size", "4", "--grad-accum", "2", "--force"])
            .arg("--torchrun")
            .arg(root().join("tests/fixtures/fake_torchrun"))
            .arg("--log-dir")
            .arg(dir.join("logs"))
            .env("VLA_DATA_ROOT", "/data")
            .env("VLA_RUN_ROOT", &dir)
            .env("WANDB_MODE", "offline")
            .env("FAKE_STDERR", oom)
            .env("FAKE_EXIT", "1")
            .run();
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        r.stderr
            .lines()
            .find(|l| l.starts_with("vla-launch: hint:"))
            .unwrap_or_else(|| panic!("no hint: {}", r.stderr))
            .to_string()
    };
    let both = hint("fsdp", "on");
    assert!(!both.contains("turn on"), "{both}");
    assert!(both.contains("already on"), "{both}");
    let neither = hint("ddp", "off");
    assert!(
        neither.contains("gradient checkpointing or FSDP"),
        "{neither}"
    );
    let ddp_ckpt = hint("ddp", "on");
    assert!(ddp_ckpt.contains("turn on FSDP"), "{ddp_ckpt}");
    assert!(
        !ddp_ckpt.contains("gradient checkpointing or"),
        "{ddp_ckpt}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 5: a flag the script's `--help` does not list is refused before torchrun starts, with
/// the closest real flag; `plan` warns (it reads the script's flags too, cached).
#[test]
fn unknown_script_flags_are_refused_before_launch_and_warned_in_plan() {
    let dir = temp_dir("flags");
    let record = dir.join("argv.json");
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let launch = |args: &[&str]| {
        bin()
            .args(["--profile", "aloha", "--gpus", "1xh100", "--log-dir"])
            .arg(dir.join("logs"))
            .arg("--torchrun")
            .arg(root().join("tests/fixtures/fake_torchrun"))
            .args(args)
            .env("VLA_DATA_ROOT", "/data")
            .env("VLA_RUN_ROOT", &dir)
            .env("WANDB_MODE", "offline")
            .env("VLA_LAUNCH_CACHE_DIR", &cache)
            .env("FAKE_RECORD", &record)
            .run()
    };
    let r = launch(&["--set", "train.max_step=1000"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        // The value is not echoed: it may be a secret (`--set train.hf_token=...`).
        r.stderr
            .contains("--set train.max_step=...: finetune.py has no --max_step")
            && !r.stderr.contains("max_step=1000")
            && r.stderr.contains("did you mean --max_steps?"),
        "{}",
        r.stderr
    );
    assert!(!record.exists(), "torchrun was started");
    let r = launch(&["--", "--run_id_notee", "x"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("did you mean --run_id_note?"),
        "{}",
        r.stderr
    );
    assert!(!record.exists(), "torchrun was started");
    // Correct flags launch.
    let r = launch(&["--set", "train.max_steps=1000", "--", "--run_id_note", "x"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // plan warns and plans: with the flags the launch cached, and with a cache of its own.
    let fresh = dir.join("fresh-cache");
    for cache_dir in [&cache, &fresh] {
        let plan = bin()
            .args([
                "plan",
                "--profile",
                "aloha",
                "--gpus",
                "1xh100",
                "--set",
                "train.max_step=5",
            ])
            .env("VLA_LAUNCH_CACHE_DIR", cache_dir)
            .run();
        assert_eq!(plan.code, Some(0), "{}", plan.stderr);
        assert!(
            plan.stderr.contains("did you mean --max_steps?"),
            "{}",
            plan.stderr
        );
    }
    // The one cache (src/script_choice.rs's, keyed on script, mtime, size and Python) holds it.
    let cached = std::fs::read_to_string(cache.join("script-flags.json")).unwrap();
    assert!(cached.contains("\"max_steps\""), "{cached}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 8: the script's unterminated last stderr line is ended before the launcher's exit line.
#[test]
fn unterminated_script_stderr_is_ended_before_the_exit_line() {
    let dir = temp_dir("unterminated");
    let r = bin()
        .args(["--profile", "aloha", "--gpus", "1xh100", "--log-dir"])
        .arg(dir.join("logs"))
        .arg("--torchrun")
        .arg(root().join("tests/fixtures/fake_torchrun"))
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", &dir)
        .env("WANDB_MODE", "offline")
        .env("FAKE_STDERR", "warn-from-script")
        .run();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("warn-from-script\nvla-launch: torchrun exited"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 8: `runs` lists past launches (when, plan, outcome, peak vs predicted, log; --json too)
/// and `logs [--follow] [RUN]` prints a run's log, the newest by default.
#[test]
fn runs_lists_past_launches_and_logs_prints_them() {
    let dir = temp_dir("runs");
    let logs = dir.join("logs");
    let launch = |text: &str, exit: &str| {
        let r = bin()
            .args(["--profile", "aloha", "--gpus", "1xh100", "--log-dir"])
            .arg(&logs)
            .arg("--torchrun")
            .arg(root().join("tests/fixtures/fake_torchrun"))
            .env("VLA_DATA_ROOT", "/data")
            .env("VLA_RUN_ROOT", &dir)
            .env("WANDB_MODE", "offline")
            .env("FAKE_STDERR", text)
            .env("FAKE_EXIT", exit)
            .run();
        assert_eq!(r.code, Some(exit.parse().unwrap()), "{}", r.stderr);
    };
    let empty = run(&["runs", "--log-dir", dir.join("none").to_str().unwrap()]);
    assert_eq!(empty.code, Some(2), "as `logs` says it: {}", empty.stderr);
    assert!(empty.stderr.contains("no runs found"), "{}", empty.stderr);
    launch("hello-ok\n", "0");
    // Record names carry the start second: keep the two runs apart.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    launch("hello-fail\n", "1");
    let logs_arg = logs.to_str().unwrap();
    let text = run(&["runs", "--log-dir", logs_arg]);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", text.stdout);
    assert!(lines[0].contains("PEAK / PREDICTED"), "{}", text.stdout);
    assert!(
        lines[1].contains("DDP b16") && lines[1].contains(" ok "),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("exit 1") && lines[2].contains("69.50 GiB"),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains(".log"), "{}", lines[2]);
    let json = run(&["runs", "--log-dir", logs_arg, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["exit_code"], 0);
    assert_eq!(list[1]["exit_code"], 1);
    let first_log = list[0]["log"].as_str().unwrap().to_string();
    let newest = run(&["logs", "--log-dir", logs_arg]);
    assert_eq!(newest.code, Some(0), "{}", newest.stderr);
    assert!(newest.stdout.contains("hello-fail"), "{}", newest.stdout);
    assert!(!newest.stdout.contains("hello-ok"), "{}", newest.stdout);
    let stamp = Path::new(&first_log).file_stem().unwrap().to_str().unwrap();
    let first = run(&["logs", "--log-dir", logs_arg, stamp]);
    assert!(first.stdout.contains("hello-ok"), "{}", first.stdout);
    // --follow on a finished run prints it and returns.
    let followed = run(&["logs", "--follow", "--log-dir", logs_arg]);
    assert_eq!(followed.code, Some(0), "{}", followed.stderr);
    assert!(
        followed.stdout.contains("hello-fail"),
        "{}",
        followed.stdout
    );
    let none = run(&["logs", "--log-dir", logs_arg, "no-such-run"]);
    assert_eq!(none.code, Some(2), "{}", none.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 9, on a pty: while the fake run prints tqdm updates, the terminal shows the launcher's
/// status line (step / max steps, samples/s, ETA, GPU memory vs prediction) instead of them;
/// with the output in a file there is no status line; the record keeps the figures either way.
#[test]
fn status_line_on_a_terminal_and_none_in_a_file() {
    let dir = temp_dir("status");
    let logs = dir.join("logs");
    let launch_args = |c: &mut Vla| {
        c.env("VLA_DATA_ROOT", "/data")
            .env("VLA_RUN_ROOT", &dir)
            .env("WANDB_MODE", "offline")
            .env("FAKE_TQDM", "20")
            .env("FAKE_TQDM_DELAY", "0.1")
            .env("TERM", "xterm");
    };
    let cmd = format!(
        "'{}' --profile aloha --gpus 1xh100 --torchrun '{}' --log-dir '{}'",
        crate::common::BIN,
        root().join("tests/fixtures/fake_torchrun").display(),
        logs.display()
    );
    let mut pty = bin();
    launch_args(&mut pty);
    let mut script = Command::new("script");
    script.args(["-qec", &cmd, "/dev/null"]).current_dir(root());
    for (k, v) in pty.command().get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    let out = script.output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("vla-launch: step "),
        "no status line:\n{screen:?}"
    );
    assert!(screen.contains("/20 ("), "{screen:?}");
    // batch 16 x 1 GPU per tqdm iteration at 10 it/s.
    assert!(screen.contains("160.0 samples/s"), "{screen:?}");
    assert!(screen.contains("ETA "), "{screen:?}");
    assert!(screen.contains("GPU 69.5 GiB predicted"), "{screen:?}");
    assert!(
        !screen.contains("| 10/20 ["),
        "tqdm's own updates are left to the log: {screen:?}"
    );

    // Output to a file: no status line, tqdm's output as it was.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut file = bin();
    launch_args(&mut file);
    let r = file
        .args(["--profile", "aloha", "--gpus", "1xh100", "--log-dir"])
        .arg(&logs)
        .arg("--torchrun")
        .arg(root().join("tests/fixtures/fake_torchrun"))
        .run();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("vla-launch: step"), "{}", r.stderr);
    assert!(r.stderr.contains("| 10/20 ["), "{}", r.stderr);
    // Both records hold the progress.
    let json = run(&["runs", "--log-dir", logs.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{}", json.stdout);
    for run in v.as_array().unwrap() {
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run["record"].as_str().unwrap()).unwrap())
                .unwrap();
        let p = &rec["outcome"]["progress"];
        assert_eq!(p["step"], 20, "{rec}");
        assert_eq!(p["max_steps"], 20, "{rec}");
        assert!(
            (p["samples_per_s"].as_f64().unwrap() - 160.0).abs() < 1e-6,
            "{rec}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 8: `logs --follow` on a run still going prints what it writes and returns once it ends.
#[test]
fn logs_follow_a_running_launch_to_its_end() {
    let dir = temp_dir("follow");
    let logs = dir.join("logs");
    let mut child = bin()
        .args(["--profile", "aloha", "--gpus", "1xh100", "--log-dir"])
        .arg(&logs)
        .arg("--torchrun")
        .arg(root().join("tests/fixtures/fake_torchrun"))
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", &dir)
        .env("WANDB_MODE", "offline")
        .env("FAKE_SLEEP", "2")
        .env("FAKE_STDERR", "a-line\n")
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the run's record to be written (the file is claimed empty first, then filled:
    // `logs` skips a record it cannot read yet, issue 26 item 2), then follow it while it runs.
    let written = || {
        std::fs::read_dir(&logs).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.path().extension().is_some_and(|x| x == "json")
                    && std::fs::read(e.path()).is_ok_and(|b| {
                        serde_json::from_slice::<serde_json::Value>(&b)
                            .is_ok_and(|v| v["started_unix"].is_u64())
                    })
            })
        })
    };
    while !written() {
        if child.try_wait().unwrap().is_some() {
            assert!(written(), "the launch ended without a readable record");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let followed = run(&["logs", "--follow", "--log-dir", logs.to_str().unwrap()]);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(followed.code, Some(0), "{}", followed.stderr);
    // The launcher's closing note comes after the script's exit: followed to the end.
    assert!(
        followed.stdout.contains("torchrun exited with code 0"),
        "{}",
        followed.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 26 item 11: the README says -v adds the plan's memory budget; `plan -v` printed none.
#[test]
fn plan_v_adds_the_memory_budget_as_the_launch_does() {
    let r = run(&["plan", "-v", "--profile", "aloha", "--gpus", "1xh100"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("Memory budget per GPU"), "{}", r.stdout);
    let r = run(&["plan", "--profile", "aloha", "--gpus", "1xh100"]);
    assert!(!r.stdout.contains("Memory budget per GPU"), "{}", r.stdout);
}

// ---- issue 24: what the memory figures assume

/// The plan says what its memory figures assume that the launcher cannot see (padded batches, a
/// fused attention kernel), and a profile whose instructions all have one length can say so: the
/// plan then needs less and says unpadded.
#[test]
fn plan_says_it_assumes_padded_batches_and_a_fused_kernel() {
    let needs = |r: &Ran| -> f64 {
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains("memory         needs"))
            .unwrap();
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let padded = run(&["plan", "--profile", "libero", "--gpus", "1xh100"]);
    assert!(
        padded
            .stdout
            .contains("assumes padded batches and a fused attention kernel (flash or cuDNN SDPA)"),
        "{}",
        padded.stdout
    );
    let v: serde_json::Value = serde_json::from_str(
        &run(&["plan", "--profile", "libero", "--gpus", "1xh100", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(v["model"]["padded_batches"], true, "{v}");
    let unpadded = run(&[
        "plan",
        "--profile",
        "libero",
        "--gpus",
        "1xh100",
        "--set",
        "model.padded_batches=false",
    ]);
    assert!(
        unpadded
            .stdout
            .contains("assumes unpadded batches (model.padded_batches: false)"),
        "{}",
        unpadded.stdout
    );
    assert!(
        needs(&unpadded) < needs(&padded),
        "{}\n{}",
        padded.stdout,
        unpadded.stdout
    );
}
