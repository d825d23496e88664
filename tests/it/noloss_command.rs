//! Issue 14, items 6 and 7: the printed command is valid shell for every byte (env names
//! included) and gives back exactly the argv and environment; env names are validated; secrets
//! are masked by value as well as by name.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Rng;

use vla_launch::cluster::Topology;
use vla_launch::launch::command::{
    AllocConf, AllocConfSource, CommandError, CommandSpec, Inherited, LaunchCommand, MASK, build,
    display, mask, render, secret_values,
};

/// The harness's generator, with the shapes this test draws.
impl Rng {
    /// Bytes 1..=255, biased towards the ones a shell cares about.
    fn bytes(&mut self, max_len: u64) -> Vec<u8> {
        const NASTY: &[u8] = b"'\"\\$`!;&|<>(){}[]*?~#= \t\n\r\x1b\x7f%^,.-_/:@+";
        (0..self.below(max_len + 1))
            .map(|_| match self.below(3) {
                0 => NASTY[self.below(NASTY.len() as u64) as usize],
                1 => b'a' + self.below(26) as u8,
                _ => 1 + self.below(255) as u8,
            })
            .collect()
    }
    fn utf8(&mut self, max_len: u64) -> String {
        let mut s = String::from_utf8_lossy(&self.bytes(max_len)).into_owned();
        if self.below(4) == 0 {
            s.push_str("é→😀");
        }
        s
    }
    fn name(&mut self) -> String {
        let mut s = String::from("V_");
        for _ in 0..self.below(8) {
            s.push(b"ABCXYZ019_"[self.below(10) as usize] as char);
        }
        s
    }
}

fn command(
    program: PathBuf,
    cwd: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
) -> LaunchCommand {
    LaunchCommand {
        program,
        args,
        env,
        cwd,
        alloc_conf: AllocConf {
            value: String::new(),
            source: AllocConfSource::Profile,
        },
    }
}

/// A program that dumps its argv (NUL-separated), environment (`env -0`) and cwd.
fn dumper(dir: &Path) -> PathBuf {
    let path = dir.join("dump it's $(here)");
    std::fs::write(
        &path,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > \"$DUMP_DIR/args\"\nenv -0 > \"$DUMP_DIR/env\"\npwd > \"$DUMP_DIR/cwd\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn run_printed(line: &str, dir: &Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<u8>) {
    for f in ["args", "env", "cwd"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(line)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let split = |b: Vec<u8>| -> Vec<Vec<u8>> {
        b.split(|&c| c == 0)
            .map(<[u8]>::to_vec)
            .filter(|v| !v.is_empty())
            .collect()
    };
    let args = std::fs::read(dir.join("args")).unwrap();
    let mut argv: Vec<Vec<u8>> = args.split(|&c| c == 0).map(<[u8]>::to_vec).collect();
    argv.pop(); // after the last NUL
    (
        argv,
        split(std::fs::read(dir.join("env")).unwrap()),
        std::fs::read(dir.join("cwd")).unwrap(),
    )
}

#[test]
fn printed_command_gives_back_exactly_the_argv_and_env_for_random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("work dir; $(touch PWN) 'q'");
    std::fs::create_dir(&cwd).unwrap();
    let program = dumper(dir.path());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..300 {
        let args: Vec<OsString> = (0..rng.below(6))
            .map(|_| OsString::from_vec(rng.bytes(12)))
            .collect();
        let mut env = vec![(
            "DUMP_DIR".to_string(),
            dir.path().to_string_lossy().into_owned(),
        )];
        for _ in 0..rng.below(4) {
            let name = rng.name();
            if env.iter().all(|(k, _)| *k != name) {
                env.push((name, rng.utf8(10)));
            }
        }
        let cmd = command(program.clone(), cwd.clone(), args.clone(), env.clone());
        let line = render(&cmd);
        assert!(
            !line.bytes().any(|b| b < 0x20 || b == 0x7f),
            "case {case}: control bytes reach the terminal: {line:?}"
        );
        let (argv, child_env, child_cwd) = run_printed(&line, dir.path());
        let want: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        assert_eq!(argv, want, "case {case}: {line}");
        for (k, v) in &env {
            let entry = format!("{k}={v}").into_bytes();
            assert!(
                child_env.contains(&entry),
                "case {case}: {k} lost in {line}"
            );
        }
        assert_eq!(
            child_cwd,
            format!("{}\n", cwd.display()).into_bytes(),
            "case {case}"
        );
        assert!(!cwd.join("PWN").exists() && !Path::new("/PWN").exists());
    }
}

#[test]
fn hostile_env_names_in_a_record_are_printed_inert() {
    // `replay` builds the command from a record, bypassing `build`'s checks: still inert, and
    // still exact (`env -0` itself prints what it got: a shell script would drop odd names).
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "A;touch PWN;B",
        "C$(touch${IFS}PWN)",
        "X;touch${IFS}PWN;Y",
        "-n",
        "1X",
    ] {
        let env = vec![(name.to_string(), "v".to_string())];
        let cmd = command(
            "env".into(),
            dir.path().to_path_buf(),
            vec!["-0".into()],
            env,
        );
        let line = display(&cmd);
        let out = Command::new("bash")
            .arg("-c")
            .arg(&line)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}");
        assert!(!dir.path().join("PWN").exists(), "{line}");
        let entries: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
        assert!(
            entries.contains(&format!("{name}=v").as_bytes()),
            "{name}: {line}"
        );
    }
}

fn spec(env: &[(&str, &str)]) -> CommandSpec {
    CommandSpec {
        torchrun: "/usr/bin/torchrun".into(),
        script: "finetune.py".into(),
        workdir: "/w".into(),
        nproc_per_node: 1,
        topology: Topology::single_node(),
        max_restarts: 0,
        script_flags: vec![],
        extra_args: vec![],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cuda_visible_devices: None,
        vram_cap_bytes: None,
        ranks_filter: None,
        torchrun_log_dir: None,
    }
}

#[test]
fn env_names_are_validated_naming_the_key() {
    let host = Inherited::default();
    for bad in ["A;touch PWN;B", "C$(x)", "A=B", "", "1X", "X Y", "é"] {
        let err = build(&spec(&[(bad, "x")]), &host).unwrap_err();
        assert!(
            matches!(&err, CommandError::BadEnvName { name } if name == bad),
            "{bad:?}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("env"), "{msg}");
        if bad.contains('=') {
            assert!(msg.contains('='), "{msg}");
        }
    }
    for good in ["A", "_x", "HF_HOME", "a1_B2"] {
        assert!(build(&spec(&[(good, "x")]), &host).is_ok(), "{good}");
    }
}

#[test]
fn secrets_are_masked_by_value_wherever_they_appear() {
    // A profile env `MY_HF_AUTH: ${HF_TOKEN}`: the name says nothing, the value is the token.
    let token = "hf_AbCdEfGh123456";
    let mut inherited = Inherited::default();
    inherited.vars.insert("HF_TOKEN".into(), token.into());
    inherited.vars.insert("PATH".into(), "/usr/bin".into());
    let mut s = spec(&[
        ("MY_HF_AUTH", token),
        ("WANDB_API_KEY", "wandbkey-0987654321"),
    ]);
    s.extra_args = vec![
        "--note".into(),
        format!("uses {token} inside"),
        "--hf-token=Zvalue".into(),
        "--mirror".into(),
        "Zvalue".into(),
        "--other".into(),
        "wandbkey-0987654321".into(),
    ];
    let cmd = build(&s, &inherited).unwrap();
    let secrets = secret_values(&cmd, &inherited.vars);
    let masked = mask(&cmd, &secrets);
    let line = render(&masked);
    for secret in [token, "wandbkey-0987654321", "Zvalue"] {
        assert!(!line.contains(secret), "{secret} shown: {line}");
    }
    assert!(
        line.contains(&format!("MY_HF_AUTH={MASK}"))
            || line.contains(&format!("MY_HF_AUTH='{MASK}'")),
        "{line}"
    );
    assert!(line.contains("'uses *** inside'"), "{line}");
    // PATH is not a secret: it is not masked anywhere.
    assert!(!secrets.iter().any(|v| v == "/usr/bin"));
    // The unmasked command is unchanged (mask returns a copy).
    assert!(render(&cmd).contains(token));
}

#[test]
fn short_or_flag_like_secret_values_do_not_mask_ordinary_arguments() {
    // `USE_SECRET_MANAGER=1` in the user's environment must not turn `--nnodes 1` into `***`.
    let mut inherited = Inherited::default();
    inherited
        .vars
        .insert("USE_SECRET_MANAGER".into(), "1".into());
    inherited
        .vars
        .insert("MY_SECRET_ENABLED".into(), "true".into());
    inherited
        .vars
        .insert("DB_PASSWORD".into(), "hunter2hunter2".into());
    let mut s = spec(&[]);
    s.extra_args = vec![
        "--flag".into(),
        "true".into(),
        "--pw".into(),
        "hunter2hunter2".into(),
    ];
    let cmd = build(&s, &inherited).unwrap();
    let line = render(&mask(&cmd, &secret_values(&cmd, &inherited.vars)));
    assert!(line.contains("--nnodes 1 "), "{line}");
    assert!(line.contains("--flag true"), "{line}");
    assert!(line.contains("--pw '***'"), "{line}");
}
