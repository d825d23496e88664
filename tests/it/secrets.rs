//! Issue 25 items 7, 8, 9, 15, 16: credentials never leave the launcher in what it prints or
//! writes (passwords in URLs, secret-named variables by a naming rule, error messages), the
//! peer-watch secret does not reach torchrun, a pasted command expands nothing, `plan -o FIFO`
//! does not block, and the cache is private.

use crate::common::Vla;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fake() -> PathBuf {
    root().join("tests/fixtures/fake_torchrun")
}

fn bin(dir: &Path) -> Vla {
    let mut c = Vla::new();
    c.env_remove("VLA_LAUNCH_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("SLURM_JOB_ID")
        .env_remove("SLURM_NNODES")
        .env_remove("HF_TOKEN")
        .env_remove(VLA_SECRET)
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", dir.join("cache"))
        .env("OPENVLA_OFT_DIR", root().join("tests/fixtures/openvla-oft"))
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", dir.join("run"))
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .env("RUST_LOG", "vla_launch=info")
        .current_dir(root());
    c
}

const VLA_SECRET: &str = "VLA_LAUNCH_JOB_SECRET";

/// The ten names issue 25 found unmasked, each with a value of its own.
const NAMED: &[&str] = &[
    "GITHUB_PAT",
    "OPENAI_APIKEY",
    "SSH_PASSPHRASE",
    "MY_AUTH",
    "AUTHORIZATION",
    "BEARER",
    "COOKIE",
    "CREDENTIAL",
    "DATABASE_URL",
    "AZURE_STORAGE_CONNECTION_STRING",
];

fn named_value(name: &str) -> String {
    format!("val{}q", name.to_lowercase().replace('_', "x"))
}

/// A profile whose model path and one variable hold URL passwords, and whose `env:` holds the
/// ten names.
fn profile(dir: &Path) -> PathBuf {
    let mut env = String::from(
        "  TOKENIZERS_PARALLELISM: \"false\"\n  DB_URL: postgres://bob:PWbob456x@db/x\n",
    );
    for n in NAMED {
        env.push_str(&format!("  {n}: {}\n", named_value(n)));
    }
    let text = std::fs::read_to_string(root().join("launch-profiles/aloha.yaml"))
        .unwrap()
        .replace(
            "vla_path: openvla/openvla-7b",
            "vla_path: https://alice:PWalice123@host/x",
        )
        .replace("  TOKENIZERS_PARALLELISM: \"false\"\n", &env);
    let path = dir.join("p.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn secrets() -> Vec<String> {
    let mut s: Vec<String> = vec!["PWalice123".into(), "PWbob456x".into(), "PWrdzv789".into()];
    s.extend(NAMED.iter().map(|n| named_value(n)));
    s
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for s in secrets() {
        assert!(!text.contains(&s), "{what} shows {s}:\n{text}");
    }
}

#[test]
fn passwords_in_urls_and_secret_named_values_are_masked_in_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile(dir.path());
    let p = p.to_str().unwrap();
    let o_file = dir.path().join("plan.json");
    let runs: Vec<(&str, Vec<String>)> = vec![
        ("plan", vec!["plan", "--gpus", "1xh100", "--profile", p]),
        (
            "plan --json",
            vec!["plan", "--gpus", "1xh100", "--json", "--profile", p],
        ),
        (
            "plan -o",
            vec![
                "plan",
                "--gpus",
                "1xh100",
                "-o",
                o_file.to_str().unwrap(),
                "--profile",
                p,
            ],
        ),
        (
            "plan --rdzv-endpoint",
            vec![
                "plan",
                "--gpus",
                "2xh100",
                "--nnodes",
                "2",
                "--node-rank",
                "0",
                "--json",
                "--rdzv-endpoint",
                "https://u:PWrdzv789@h:1",
                "--profile",
                p,
            ],
        ),
        (
            "--dry-run",
            vec!["--gpus", "1xh100", "--dry-run", "--profile", p],
        ),
        (
            "--dry-run --rdzv-endpoint",
            vec![
                "--gpus",
                "2xh100",
                "--nnodes",
                "2",
                "--node-rank",
                "1",
                "--dry-run",
                "--rdzv-endpoint",
                "u:PWrdzv789@h:1",
                "--profile",
                p,
            ],
        ),
        ("doctor --json", vec!["doctor", "--json", "--profile", p]),
    ]
    .into_iter()
    .map(|(w, a)| (w, a.into_iter().map(String::from).collect()))
    .collect();
    for (what, args) in runs {
        let out = bin(dir.path()).args(&args).output().unwrap();
        assert_no_secret(what, &text(&out));
    }
    assert_no_secret("the -o file", &std::fs::read_to_string(&o_file).unwrap());

    // A launch: the printed command, the run log and the record; torchrun gets the real values.
    let logs = dir.path().join("logs");
    let seen = dir.path().join("seen.json");
    let out = bin(dir.path())
        .args(["--gpus", "1xh100", "--profile", p, "--torchrun"])
        .arg(fake())
        .arg("--log-dir")
        .arg(&logs)
        .env("FAKE_RECORD", &seen)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_no_secret("the launch's terminal", &text(&out));
    let mut files = 0;
    for f in std::fs::read_dir(&logs).unwrap().flatten() {
        if f.path().is_file() {
            files += 1;
            let t = String::from_utf8_lossy(&std::fs::read(f.path()).unwrap()).into_owned();
            assert_no_secret(&f.path().display().to_string(), &t);
        }
    }
    assert!(files >= 2, "a log and a record");
    let ran: serde_json::Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert!(
        ran["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "https://alice:PWalice123@host/x"),
        "torchrun got the real path"
    );
    assert_eq!(ran["env"]["DB_URL"], "postgres://bob:PWbob456x@db/x");
    assert_eq!(ran["env"]["GITHUB_PAT"], named_value("GITHUB_PAT"));
}

#[test]
fn error_messages_do_not_quote_a_secret_back() {
    let dir = tempfile::tempdir().unwrap();
    let gh = "ghp_R4nd0mT0k3nV4lu3F0rT3st1ngXyZ12345";
    let hf = "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";
    let sk = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz012345";
    // Any format, known to be a secret because a secret-named variable holds it.
    let mine = "plainsecretvalue42";
    let cases: Vec<Vec<String>> = vec![
        vec!["--set".into(), format!("train.lora_rank={gh}")],
        vec!["--set".into(), format!("train.max_steps={hf}")],
        vec!["--set".into(), format!("planning.margin_fraction={sk}")],
        vec!["--set".into(), format!("model.preset={gh}")],
        vec!["--set".into(), format!("script.max_restarts={hf}")],
        vec!["--set".into(), format!("train.lora_rank={mine}")],
        vec!["--vram-cap".into(), sk.into()],
        vec!["--profile".into(), gh.into()],
        vec![
            "--rdzv-endpoint".into(),
            format!("x:{mine}@h:1"),
            "--nnodes".into(),
            "2".into(),
        ],
    ];
    for args in cases {
        let mut c = bin(dir.path());
        c.args(["plan", "--gpus", "1xh100"]).args(&args);
        if !args.contains(&"--profile".to_string()) {
            c.args(["--profile", "aloha"]);
        }
        let out = c.env("MY_API_TOKEN", mine).output().unwrap();
        let t = text(&out);
        // All but the endpoint are errors; the endpoint is a warning (planning only).
        let warned = args[0] == "--rdzv-endpoint";
        assert_eq!(out.status.code() == Some(0), warned, "{args:?}: {t}");
        for s in [gh, hf, sk, mine] {
            assert!(!t.contains(s), "{args:?} quotes {s}:\n{t}");
            // Nor a long piece of it.
            assert!(!t.contains(&s[..16]), "{args:?} quotes part of {s}:\n{t}");
        }
    }
}

#[test]
fn the_peer_watch_secret_does_not_reach_torchrun() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen.json");
    let out = bin(dir.path())
        .args(["--gpus", "1xh100", "--profile", "aloha", "--torchrun"])
        .arg(fake())
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env(VLA_SECRET, "job-secret-0123456789abcdef")
        .env("FAKE_RECORD", &seen)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ran: serde_json::Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert!(ran["env"].get(VLA_SECRET).is_none(), "{}", ran["env"]);
    assert!(
        !ran["env"]
            .to_string()
            .contains("job-secret-0123456789abcdef")
    );
}

/// Item 15: the printed command, pasted into bash, passes a literal `${NAME}` on literally.
#[test]
fn a_pasted_command_expands_no_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path())
        .args([
            "--gpus",
            "1xh100",
            "--dry-run",
            "--profile",
            "aloha",
            "--torchrun",
        ])
        .arg(fake())
        .args(["--", "--run_id_note", "${HF_TOKEN}$(echo x)`echo y`$HOME"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let seen = dir.path().join("seen.json");
    let pasted = Command::new("bash")
        .arg("-c")
        .arg(&line)
        .env("PATH", crate::common::path())
        .env("HF_TOKEN", "hf_pasted_leak")
        .env("FAKE_RECORD", &seen)
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(pasted.status.code(), Some(0), "{line}\n{}", text(&pasted));
    let ran: serde_json::Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    let argv = ran["argv"].as_array().unwrap();
    assert_eq!(
        argv.last().unwrap(),
        "${HF_TOKEN}$(echo x)`echo y`$HOME",
        "{line}"
    );
}

/// Item 16: `plan -o FIFO` with no reader ends (refused, naming the FIFO) instead of blocking.
#[test]
fn plan_o_to_a_fifo_without_a_reader_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut child = bin(dir.path())
        .args(["plan", "--gpus", "1xh100", "--profile", "aloha", "-o"])
        .arg(&fifo)
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Only a bound on failure: a fixed launcher ends at once, a broken one never does.
    let mut waited = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        waited += 1;
        if waited > 1200 {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("plan -o FIFO still blocked after 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("fifo") && err.contains("reader"), "{err}");
}

/// Item 16: the cache directory is created 0700 and its files 0600 (they name the user's
/// scripts, Python and runs).
#[test]
fn the_cache_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = bin(dir.path())
        .args(["plan", "--gpus", "1xh100", "--profile", "aloha"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert!(
        cache.is_dir(),
        "the script-flags cache was written: {}",
        text(&out)
    );
    assert_eq!(mode(&cache), 0o700);
    let mut files = 0;
    for f in std::fs::read_dir(&cache).unwrap().flatten() {
        files += 1;
        assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
    }
    assert!(files > 0);
}
