//! Issue 14 item 11: messages name the real source (plan-file field, profile field, flag), numbers
//! are range-checked where they are parsed, and no error echoes unbounded input.

use crate::common::Vla;
use std::path::{Path, PathBuf};
use std::process::Output;

use vla_launch::profile;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin(dir: &Path) -> Vla {
    let mut c = Vla::new();
    c.env_remove("VLA_LAUNCH_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("SLURM_JOB_ID")
        .env_remove("SLURM_NNODES")
        .env_remove("SLURM_JOB_NODELIST")
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("OPENVLA_OFT_DIR", root().join("tests/fixtures/openvla-oft"))
        .env("VLA_DATA_ROOT", "/d")
        .env("VLA_RUN_ROOT", dir)
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .env("RUST_LOG", "vla_launch=warn")
        .current_dir(root());
    c
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A plan file from `plan -o`, edited.
fn plan_file(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let path = dir.join("plan.json");
    let out = bin(dir)
        .args(["plan", "-p", "aloha", "--gpus", "1xh100", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    path
}

fn launch_with(dir: &Path, plan: &Path) -> Output {
    bin(dir)
        .args(["--gpus", "1xh100", "--dry-run", "--plan-file"])
        .arg(plan)
        .output()
        .unwrap()
}

#[test]
fn plan_file_values_are_named_as_plan_file_fields() {
    let dir = tempfile::tempdir().unwrap();
    for (field, value) in [
        ("nproc_per_node", serde_json::json!(0)),
        ("batch_size", serde_json::json!(0)),
        ("grad_accumulation_steps", serde_json::json!(0)),
        ("grad_accumulation_steps", serde_json::json!(2147483648u64)),
        ("min_global_batch", serde_json::json!(4000000000u64)),
    ] {
        let p = plan_file(dir.path(), |v| v[field] = value.clone());
        let out = launch_with(dir.path(), &p);
        let e = err(&out);
        assert_eq!(out.status.code(), Some(2), "{field}={value}: {e}");
        assert!(
            e.contains(&format!("`{field}`")) && e.contains("--plan-file"),
            "{e}"
        );
        assert!(
            !e.contains("--nproc ") && !e.contains("--batch-size "),
            "{e}"
        );
    }
}

#[test]
fn a_plan_file_that_is_not_an_object_or_has_a_wrong_type_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.json");
    for text in ["[]", "42", "\"plan\"", "null", "[1, 2]"] {
        std::fs::write(&p, text).unwrap();
        let out = launch_with(dir.path(), &p);
        let e = err(&out);
        assert_eq!(out.status.code(), Some(2), "{text}: {e}");
        assert!(e.contains("not a JSON object"), "{text}: {e}");
    }
    std::fs::write(&p, "{}").unwrap();
    let e = err(&launch_with(dir.path(), &p));
    assert!(
        !e.contains("not feasible") && e.contains("`feasible`"),
        "{e}"
    );
    let p = plan_file(dir.path(), |v| v["batch_size"] = "8".into());
    let e = err(&launch_with(dir.path(), &p));
    assert!(
        e.contains("`batch_size`") && e.contains("string") && !e.contains("no `batch_size`"),
        "{e}"
    );
}

#[test]
fn nul_bytes_in_profile_values_are_refused_at_load_naming_the_field() {
    for (text, field) in [
        ("script:\n  path: \"a\\0b\"\ntrain: {}\n", "script.path"),
        (
            "script:\n  path: x.py\ntrain:\n  run_id_note: \"a\\0\"\n",
            "train.run_id_note",
        ),
        (
            "script:\n  path: x.py\ntrain: {}\nenv:\n  A: \"\\0\"\n",
            "env.A",
        ),
    ] {
        let e = profile::parse(text, "p.yaml").unwrap_err().to_string();
        assert!(e.contains(field) && e.contains("NUL"), "{e}");
    }
}

#[test]
fn a_profile_with_cr_only_line_endings_reads_like_the_same_with_newlines() {
    let text = std::fs::read_to_string(root().join("launch-profiles/aloha.yaml")).unwrap();
    let cr = text.replace('\n', "\r");
    let a = profile::parse(&text, "aloha.yaml").unwrap();
    let b = profile::parse(&cr, "aloha-cr.yaml").unwrap();
    assert_eq!(a, b);
    let e = profile::parse("script:\r  path: x.py\r  bogus: 1\rtrain: {}\r", "cr.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bogus") && !e.contains("empty"), "{e}");
}

#[test]
fn pins_that_would_wrap_the_global_batch_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &[
            "--grad-accum",
            "2147483648",
            "--batch-size",
            "1",
            "--nproc",
            "2",
        ][..],
        &["--batch-size", "4294967295"],
        &["--global-batch", "4294967295"],
    ] {
        let out = bin(dir.path())
            .args(["plan", "-p", "aloha", "--gpus", "2xh100"])
            .args(args)
            .output()
            .unwrap();
        let e = err(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(args[0]) && !e.contains("panicked"), "{e}");
    }
}

#[test]
fn lora_rank_out_of_range_is_refused_naming_the_field() {
    for v in ["4294967296", "100000", "0"] {
        let text = format!("script:\n  path: x.py\ntrain:\n  lora_rank: {v}\n");
        let e = profile::parse(&text, "p.yaml").unwrap_err().to_string();
        assert!(e.contains("lora_rank"), "{v}: {e}");
    }
    let l = profile::parse("script:\n  path: x.py\ntrain:\n  lora_rank: 64\n", "p.yaml").unwrap();
    assert_eq!(
        profile::model_spec(&l, &profile::ScriptArgs::default()).lora_rank,
        64
    );
}

#[test]
fn pass_through_flags_that_collide_with_the_planner_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        &["--batch_size", "64"][..],
        &["--batch-size=64"],
        &["--grad_accumulation_steps", "2"],
        &["--use_fsdp", "True"],
    ] {
        let out = bin(dir.path())
            .args(["-p", "aloha", "--gpus", "1xh100", "--dry-run", "--"])
            .args(extra)
            .output()
            .unwrap();
        let e = err(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {e}");
        assert!(e.contains(extra[0].split('=').next().unwrap()), "{e}");
        assert!(e.contains("planner"), "{e}");
    }
}

#[test]
fn negative_numbers_get_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for flag in [
        "--batch-size",
        "--grad-accum",
        "--nproc",
        "--global-batch",
        "--nnodes",
    ] {
        let out = bin(dir.path())
            .args(["plan", "-p", "aloha", "--gpus", "1xh100", flag, "-1"])
            .output()
            .unwrap();
        let e = err(&out);
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert!(
            e.contains(flag) && e.contains("-1") && e.contains("negative"),
            "{e}"
        );
    }
    let out = bin(dir.path())
        .args([
            "-p",
            "aloha",
            "--gpus",
            "1xh100",
            "--grace",
            "-5",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let e = err(&out);
    assert!(e.contains("--grace") && e.contains("negative"), "{e}");
}

#[test]
fn errors_quote_at_most_a_short_excerpt_of_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let long = "a".repeat(10_000);
    let out = bin(dir.path())
        .args(["plan", "-p", "aloha", "--gpus", "1xh100"])
        .env("SLURM_JOB_ID", "7")
        .env("SLURM_NNODES", "2")
        .env("SLURM_JOB_NODELIST", format!("{long}["))
        .output()
        .unwrap();
    let e = err(&out);
    assert_eq!(out.status.code(), Some(2), "{}", &e[..e.len().min(300)]);
    assert!(e.len() < 1000, "{} bytes of error", e.len());
    assert!(e.contains("SLURM_JOB_NODELIST"), "{e}");

    // A file that is not a profile at all (here: a password-file line).
    let shadow = dir.path().join("shadow");
    std::fs::write(
        &shadow,
        "root:$6$abcdefgh$secrethashsecrethash:19000:0:99999:7:::\n",
    )
    .unwrap();
    let out = bin(dir.path())
        .args(["plan", "--gpus", "1xh100", "-p"])
        .arg(&shadow)
        .output()
        .unwrap();
    let e = err(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        !e.contains("abcdefgh") && e.contains("not a launch profile"),
        "{e}"
    );

    let e = profile::parse(
        &format!("script:\n  path: x.py\n  {long}: 1\ntrain: {{}}\n"),
        "p.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.len() < 400, "{} bytes: {}", e.len(), &e[..200]);
}

/// No error echoes a 10,000-character argument whole, whichever flag it was given to.
#[test]
fn no_error_echoes_a_long_argument_whole() {
    let dir = tempfile::tempdir().unwrap();
    let long = "z".repeat(10_000);
    let long_digits = "9".repeat(10_000);
    let cases: Vec<Vec<String>> = vec![
        vec!["plan".into(), "-p".into(), long.clone()],
        vec![
            "plan".into(),
            "-p".into(),
            "aloha".into(),
            "--set".into(),
            long.clone(),
        ],
        vec![
            "plan".into(),
            "-p".into(),
            "aloha".into(),
            "--set".into(),
            format!("train.{long}=1"),
        ],
        vec![
            "plan".into(),
            "-p".into(),
            "aloha".into(),
            "--set".into(),
            format!("train.lora_rank={long}"),
        ],
        vec![
            "plan".into(),
            "-p".into(),
            "aloha".into(),
            "--gpus".into(),
            long.clone(),
        ],
        vec![
            "plan".into(),
            "-p".into(),
            "aloha".into(),
            "--gpus".into(),
            "1xh100".into(),
            "--vram-cap".into(),
            long.clone(),
        ],
        vec![
            "plan".into(),
            "-p".into(),
            "aloha".into(),
            "--gpus".into(),
            "1xh100".into(),
            "--host-ram".into(),
            long.clone(),
        ],
        vec![
            "plan".into(),
            "-p".into(),
            "aloha".into(),
            "--gpus".into(),
            "1xh100".into(),
            "--batch-size".into(),
            long_digits.clone(),
        ],
        vec![
            "plan".into(),
            "-p".into(),
            "aloha".into(),
            "--gpus".into(),
            "1xh100".into(),
            "--strategy".into(),
            long.clone(),
        ],
        vec![
            "-p".into(),
            "aloha".into(),
            "--gpus".into(),
            "1xh100".into(),
            "--dry-run".into(),
            "--ranks".into(),
            long.clone(),
        ],
        vec![
            "-p".into(),
            "aloha".into(),
            "--gpus".into(),
            "1xh100".into(),
            "--dry-run".into(),
            "--peer-watch-port".into(),
            long.clone(),
        ],
        vec![
            "-p".into(),
            "aloha".into(),
            "--gpus".into(),
            "1xh100".into(),
            "--dry-run".into(),
            "--".into(),
            format!("--batch_size={long}"),
        ],
        vec![long.clone()],
    ];
    let mut failures = Vec::new();
    for args in cases {
        let out = bin(dir.path()).args(&args).output().unwrap();
        let e = err(&out);
        let shown: Vec<String> = args.iter().map(|a| a.chars().take(30).collect()).collect();
        assert_ne!(out.status.code(), Some(0), "{shown:?}");
        // The plan may be printed before the error; no line may echo the argument whole.
        if e.len() >= 3000 || e.lines().any(|l| l.len() > 400) {
            failures.push(format!("{shown:?}: {} bytes: {}", e.len(), &e[..200]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The reason a profile cannot be read is said once (it was printed twice: the error and its
/// source).
#[test]
fn an_unreadable_profile_is_explained_once() {
    let dir = tempfile::tempdir().unwrap();
    for (path, reason) in [
        ("/dev/zero", "character device"),
        ("./no/such.yaml", "No such file"),
    ] {
        let out = bin(dir.path())
            .args(["plan", "--gpus", "1xh100", "-p", path])
            .output()
            .unwrap();
        let e = err(&out);
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert_eq!(e.matches(reason).count(), 1, "{e}");
        assert!(e.contains(path), "{e}");
    }
}

/// Issue 26 item 8: outside a checkout (nothing to ask for its flags) a mistyped `--set train.*`
/// planned rank 32 and printed `--lora_rnak 8` without a word. It warns, naming the closest
/// known field; a field the profile or the script has, or one close to none, passes quietly.
#[test]
fn a_mistyped_train_field_outside_a_checkout_warns_with_the_closest_field() {
    let dir = tempfile::tempdir().unwrap();
    let plan = |set: &str| {
        let o = bin(dir.path())
            .env("OPENVLA_OFT_DIR", dir.path().join("no-checkout"))
            .args(["plan", "-p", "aloha", "--gpus", "1xh100", "--set", set])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        err(&o)
    };
    let e = plan("train.lora_rnak=8");
    assert!(
        e.contains("--set train.lora_rnak") && e.contains("did you mean train.lora_rank?"),
        "{e}"
    );
    for quiet in [
        "train.lora_rank=8",
        "train.resume_step=3",
        "train.my_own_flag=1",
    ] {
        let e = plan(quiet);
        assert!(!e.contains("did you mean"), "{quiet}: {e}");
    }
}

/// Issue 26 item 9: planning 2 nodes with `--rdzv-endpoint` but no `--node-rank` said "no
/// rendezvous endpoint"; the missing piece was the node rank. The warning names it, and the
/// plan's command (for node 0) uses the endpoint given.
#[test]
fn the_multi_node_warning_names_the_missing_piece() {
    let dir = tempfile::tempdir().unwrap();
    let plan = |extra: &[&str]| {
        let o = bin(dir.path())
            .args(["plan", "-p", "aloha", "--gpus", "8xh100", "--nnodes", "2"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        (String::from_utf8_lossy(&o.stdout).into_owned(), err(&o))
    };
    let (out, e) = plan(&["--rdzv-endpoint", "node1:29500"]);
    assert!(!e.contains("no rendezvous endpoint"), "{e}");
    assert!(e.contains("--node-rank"), "{e}");
    assert!(out.contains("node1:29500"), "{out}");
    // Without an endpoint, that is what is missing (as well as the rank).
    let (_, e) = plan(&[]);
    assert!(e.contains("--rdzv-endpoint"), "{e}");
}

/// Issue 26 item 11: the unset placeholders of a plan away from the checkout are one warning,
/// not four, and both it and a launch's error start with what is missing and name
/// WANDB_MODE=offline as the alternative to the W&B pair.
#[test]
fn unset_placeholders_are_one_warning_and_the_error_starts_with_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let unset = |c: &mut Vla| {
        for v in [
            "VLA_DATA_ROOT",
            "VLA_RUN_ROOT",
            "WANDB_ENTITY",
            "WANDB_PROJECT",
        ] {
            c.env_remove(v);
        }
        c.env_remove("WANDB_MODE");
    };
    let mut c = bin(dir.path());
    unset(&mut c);
    let o = c
        .env("OPENVLA_OFT_DIR", dir.path().join("no-checkout"))
        .args(["plan", "-p", "aloha", "--gpus", "1xh100"])
        .output()
        .unwrap();
    let e = err(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.contains("not set")).collect();
    assert_eq!(lines.len(), 1, "{e}");
    for v in [
        "VLA_DATA_ROOT",
        "VLA_RUN_ROOT",
        "WANDB_ENTITY",
        "WANDB_PROJECT",
    ] {
        assert!(lines[0].contains(v), "{v}: {e}");
    }
    assert!(lines[0].contains("WANDB_MODE=offline"), "{e}");
    // A launch refuses, starting with what is missing.
    let mut c = bin(dir.path());
    unset(&mut c);
    let o = c
        .args([
            "--profile",
            "aloha",
            "--gpus",
            "1xh100",
            "--torchrun",
            "/bin/true",
        ])
        .output()
        .unwrap();
    let e = err(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    let line = e.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.starts_with("error: VLA_DATA_ROOT, "), "{line}");
    assert!(line.contains("WANDB_MODE=offline"), "{line}");
}
