use super::*;
use crate::cluster::Rendezvous;

fn spec() -> CommandSpec {
    CommandSpec {
        torchrun: "/usr/bin/torchrun".into(),
        script: "vla-scripts/finetune.py".into(),
        workdir: "/work/openvla-oft".into(),
        nproc_per_node: 2,
        topology: Topology::single_node(),
        max_restarts: 0,
        script_flags: vec![
            ("--batch_size".into(), "4".into()),
            ("--run_id_note".into(), "a b; $(rm -rf /) 'q'".into()),
        ],
        extra_args: vec!["--wandb_project".into(), "x".into()],
        env: vec![],
        cuda_visible_devices: Some("GPU-aaa,GPU-bbb".into()),
        ranks_filter: None,
        torchrun_log_dir: None,
        vram_cap_bytes: None,
    }
}

fn host(vars: &[(&str, &str)]) -> Inherited {
    Inherited {
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cpus: 16,
    }
}

fn argv(cmd: &LaunchCommand) -> Vec<String> {
    cmd.args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn env_of<'a>(cmd: &'a LaunchCommand, name: &str) -> Option<&'a str> {
    cmd.env
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn single_node_argv_is_exact() {
    let cmd = build(&spec(), &host(&[])).unwrap();
    assert_eq!(
        argv(&cmd),
        [
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            "vla-scripts/finetune.py",
            "--batch_size",
            "4",
            "--run_id_note",
            "a b; $(rm -rf /) 'q'",
            "--wandb_project",
            "x"
        ]
    );
    assert_eq!(cmd.program, PathBuf::from("/usr/bin/torchrun"));
    assert_eq!(cmd.cwd, PathBuf::from("/work/openvla-oft"));
}

#[test]
fn multi_node_argv_names_the_rendezvous() {
    let mut s = spec();
    s.topology = Topology {
        nnodes: 4,
        node_rank: 3,
        rendezvous: Some(Rendezvous {
            backend: "c10d".into(),
            endpoint: "node01:29500".into(),
            id: "slurm-77".into(),
        }),
        source: "slurm job 77".into(),
        slurm_job_id: Some("77".into()),
        ..Topology::single_node()
    };
    s.max_restarts = 2;
    s.script_flags.truncate(1);
    s.extra_args.clear();
    let cmd = build(&s, &host(&[])).unwrap();
    assert_eq!(
        argv(&cmd),
        [
            "--nnodes",
            "4",
            "--nproc-per-node",
            "2",
            "--node-rank",
            "3",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            "node01:29500",
            "--rdzv-id",
            "slurm-77",
            // Only Slurm's node 0 hosts the store (issue 25 item 12).
            "--rdzv-conf",
            "is_host=0",
            "--max-restarts",
            "2",
            "vla-scripts/finetune.py",
            "--batch_size",
            "4"
        ]
    );
}

#[test]
fn invalid_specs_are_rejected_with_the_value_at_fault() {
    let mut no_procs = spec();
    no_procs.nproc_per_node = 0;
    let mut no_rdzv = spec();
    no_rdzv.topology.nnodes = 2;
    let mut bad_rank = spec();
    bad_rank.topology.node_rank = 1;
    let mut bad_flag = spec();
    bad_flag.script_flags = vec![("batch_size".into(), "4".into())];
    let cases = [
        (no_procs, CommandError::NoProcesses),
        (no_rdzv, CommandError::MissingRendezvous { nnodes: 2 }),
        (
            bad_rank,
            CommandError::BadNodeRank {
                node_rank: 1,
                nnodes: 1,
            },
        ),
        (
            bad_flag,
            CommandError::BadFlagName {
                name: "batch_size".into(),
            },
        ),
    ];
    for (s, want) in cases {
        assert_eq!(build(&s, &host(&[])), Err(want));
    }
}

#[test]
fn environment_table() {
    // (user env, profile env, vram cap) -> expected values (None = not set by the launcher)
    struct Case {
        user: &'static [(&'static str, &'static str)],
        profile: &'static [(&'static str, &'static str)],
        cap: Option<u64>,
        alloc: Option<&'static str>,
        alloc_source: AllocConfSource,
        allocator: Allocator,
        omp: Option<&'static str>,
        visible: &'static str,
        cap_env: Option<&'static str>,
    }
    let cases = [
        Case {
            user: &[],
            profile: &[],
            cap: None,
            alloc: Some("expandable_segments:True"),
            alloc_source: AllocConfSource::Launcher,
            allocator: Allocator::ExpandableSegments,
            omp: Some("8"),
            visible: "GPU-aaa,GPU-bbb",
            cap_env: None,
        },
        Case {
            user: &[
                ("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128"),
                ("OMP_NUM_THREADS", "3"),
            ],
            profile: &[],
            cap: Some(24 << 30),
            alloc: None,
            alloc_source: AllocConfSource::User,
            allocator: Allocator::Default,
            omp: None,
            visible: "GPU-aaa,GPU-bbb",
            cap_env: Some("25769803776"),
        },
        Case {
            user: &[("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")],
            profile: &[
                (
                    "PYTORCH_CUDA_ALLOC_CONF",
                    "garbage_collection_threshold:0.6, expandable_segments:true",
                ),
                ("CUDA_VISIBLE_DEVICES", "0"),
                ("HF_TOKEN", "hf_abc"),
            ],
            cap: None,
            alloc: Some("garbage_collection_threshold:0.6, expandable_segments:true"),
            alloc_source: AllocConfSource::Profile,
            allocator: Allocator::ExpandableSegments,
            omp: Some("8"),
            visible: "GPU-aaa,GPU-bbb",
            cap_env: None,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let mut s = spec();
        s.env = c
            .profile
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.vram_cap_bytes = c.cap;
        let cmd = build(&s, &host(c.user)).unwrap();
        assert_eq!(env_of(&cmd, ENV_ALLOC_CONF), c.alloc, "case {i}");
        assert_eq!(cmd.alloc_conf.source, c.alloc_source, "case {i}");
        assert_eq!(cmd.alloc_conf.allocator(), c.allocator, "case {i}");
        assert_eq!(env_of(&cmd, ENV_OMP_THREADS), c.omp, "case {i}");
        assert_eq!(
            env_of(&cmd, ENV_VISIBLE_DEVICES),
            Some(c.visible),
            "case {i}"
        );
        assert_eq!(
            env_of(&cmd, ENV_DEVICE_ORDER),
            Some("PCI_BUS_ID"),
            "case {i}"
        );
        assert_eq!(env_of(&cmd, ENV_UNBUFFERED), Some("1"), "case {i}");
        assert_eq!(env_of(&cmd, ENV_VRAM_CAP), c.cap_env, "case {i}");
        let names: Vec<&str> = cmd.env.iter().map(|(k, _)| k.as_str()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            names.len(),
            "case {i}: duplicate names {names:?}"
        );
    }
}

#[test]
fn secret_names() {
    let cases = [
        ("HF_TOKEN", true),
        ("WANDB_API_KEY", true),
        ("HUGGING_FACE_HUB_TOKEN", true),
        ("AWS_SECRET_ACCESS_KEY", true),
        ("DB_PASSWORD", true),
        ("my_password_file", true),
        ("--hf-token", true),
        ("--wandb_api_key", true),
        ("GITHUB_TOKEN", true),
        ("CUDA_VISIBLE_DEVICES", false),
        ("WANDB_PROJECT", false),
        ("--batch_size", false),
        ("TOKENIZERS_PARALLELISM", false),
        ("PATH", false),
    ];
    for (name, want) in cases {
        assert_eq!(is_secret(name), want, "{name}");
    }
}

#[test]
fn quoting_table() {
    let cases = [
        ("plain-value_1.0", "plain-value_1.0"),
        ("", "''"),
        ("a b", "'a b'"),
        ("it's", r"'it'\''s'"),
        ("$(rm -rf /)", "'$(rm -rf /)'"),
        ("x;y", "'x;y'"),
        // Control characters are escaped (bash's $'...'): exact, and inert on a terminal.
        ("tab\there", "$'tab\\x09here'"),
        ("a\nb", "$'a\\x0ab'"),
    ];
    for (raw, want) in cases {
        assert_eq!(shell_quote(raw), want, "{raw:?}");
    }
}

#[test]
fn display_masks_secrets_and_quotes_values() {
    let mut s = spec();
    s.env = vec![
        ("HF_TOKEN".into(), "hf_abc".into()),
        ("WANDB_MODE".into(), "offline".into()),
    ];
    s.extra_args = vec![
        "--hf_token".into(),
        "hf_xyz".into(),
        "--wandb_api_key=k123".into(),
    ];
    let cmd = build(&s, &host(&[])).unwrap();
    let line = display(&cmd);
    assert!(
        !line.contains("hf_abc") && !line.contains("hf_xyz") && !line.contains("k123"),
        "{line}"
    );
    assert_eq!(
        line,
        "cd /work/openvla-oft && PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 \
         PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True HF_TOKEN='***' WANDB_MODE=offline \
         CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=GPU-aaa,GPU-bbb /usr/bin/torchrun \
         --standalone --nnodes 1 --nproc-per-node 2 vla-scripts/finetune.py --batch_size 4 \
         --run_id_note 'a b; $(rm -rf /) '\\''q'\\''' --hf_token '***' --wandb_api_key='***'"
    );
}

/// Issue 25 item 8: masking by name is a rule on the name's words, not a list.
#[test]
fn secret_names_by_rule() {
    for name in [
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
        "HF_TOKEN",
        "WANDB_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "DB_PASSWORD",
        "MYSQLPASSWORD",
        "SENTRY_DSN",
        "SLACK_WEBHOOK_URL",
        "--hf_token",
        "--hf-token",
        "--wandb-api-key",
        "hfToken",
        "privateKey",
        "REDIS_URL",
        "GCP_CREDENTIALS",
    ] {
        assert!(is_secret(name), "{name}");
    }
    for name in [
        "TOKENIZERS_PARALLELISM",
        "PWD",
        "AUTHOR",
        "KEYBOARD",
        "MONKEY",
        "PATH",
        "PYTHONPATH",
        "OMP_NUM_THREADS",
        "CUDA_DEVICE_ORDER",
        "PYTORCH_CUDA_ALLOC_CONF",
        "WANDB_MODE",
        "--lora_rank",
        "--max_steps",
        "--vla_path",
        "--data_root_dir",
        "--run_id_note",
        "--use_fsdp",
        "--num_images_in_input",
        "VLA_DATA_ROOT",
        "DATASET_URL",
        "BYPASS_CACHE",
    ] {
        assert!(!is_secret(name), "{name}");
    }
}

/// Issue 25 item 7: the password of a URL is masked wherever the URL stands.
#[test]
fn url_passwords_are_masked() {
    for (value, shown) in [
        ("https://alice:PW@host/x", "https://alice:***@host/x"),
        (
            "postgres://bob:p%40ss@db:5432/x",
            "postgres://bob:***@db:5432/x",
        ),
        ("u:PW@h:1", "u:***@h:1"),
        ("--rdzv-endpoint=u:PW@h:1", "--rdzv-endpoint=u:***@h:1"),
        (
            "a https://x:1@h and http://y:2@[::1]:9",
            "a https://x:***@h and http://y:***@[::1]:9",
        ),
        ("https://alice@host/x", "https://alice@host/x"),
        ("user@example.com", "user@example.com"),
        ("git@github.com:org/repo", "git@github.com:org/repo"),
        ("plain", "plain"),
    ] {
        assert_eq!(mask_url_passwords(value), shown, "{value}");
    }
    let cmd = LaunchCommand {
        program: "torchrun".into(),
        args: vec!["--vla_path".into(), "https://alice:PWalice@h/x".into()],
        env: vec![("DB".into(), "postgres://bob:PWbob@db/x".into())],
        cwd: ".".into(),
        alloc_conf: AllocConf {
            value: String::new(),
            source: AllocConfSource::Launcher,
        },
    };
    let shown = display(&cmd);
    assert!(
        !shown.contains("PWalice") && !shown.contains("PWbob"),
        "{shown}"
    );
    assert!(
        shown.contains("alice:") && shown.contains("bob:"),
        "{shown}"
    );
}

/// Issue 25 item 8: tokens of a known shape are masked in free text (error messages).
#[test]
fn token_shapes_are_masked_in_text() {
    for token in [
        "ghp_R4nd0mT0k3nV4lu3F0rT3st1ngXyZ12345",
        "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",
        "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz012345",
        "AKIAIOSFODNN7EXAMPLE",
    ] {
        let t = redact_text(&format!("found \"{token}\", expected a number"));
        assert_eq!(t, "found \"***\", expected a number", "{token}");
    }
    for plain in [
        "aloha1_put_X_into_pot_300_demos",
        "sk-learn-is-a-library-name-here",
        "hf_dataset",
        "openvla/openvla-7b",
    ] {
        assert_eq!(redact_text(plain), plain);
    }
}

/// Issue 25 item 15: `display` quotes a `${NAME}` literally unless the plan left NAME unset.
#[test]
fn display_expands_only_unset_placeholders() {
    let cmd = LaunchCommand {
        program: "torchrun".into(),
        args: vec![
            "--a".into(),
            "${HF_TOKEN}".into(),
            "--b".into(),
            "${X}".into(),
        ],
        env: vec![],
        cwd: ".".into(),
        alloc_conf: AllocConf {
            value: String::new(),
            source: AllocConfSource::Launcher,
        },
    };
    assert_eq!(display(&cmd), "torchrun --a '${HF_TOKEN}' --b '${X}'");
    let missing = [("train.b".to_string(), "X".to_string())];
    assert_eq!(
        display_with_unset(&cmd, &missing),
        "torchrun --a '${HF_TOKEN}' --b \"${X}\""
    );
}
