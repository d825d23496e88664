//! Issue 26: every command in the README is run, here or by a named script or test, and every
//! output it shows is the binary's real output.
//!
//! The README's `sh` and `console` blocks are read in order. In a `sh` block each line is a
//! command; in a `console` block a `$ ` line is a command and the lines after it, if any, are its
//! standard output. A command runs through `bash` in one scratch directory (with `scripts/` and
//! `launch-profiles/` of this checkout, a scratch HOME, and the built binary on PATH as
//! `vla-launch`; `cargo run --release --` stands for it), after the `export` lines before it in its
//! block; it must exit 0, or the code its comment names (`# exits 3`). Commands that need a GPU, a
//! Slurm cluster, a past run or minutes of building are listed in `ELSEWHERE` with the file that
//! runs them; a README command in neither place fails the test.
//!
//! An HTML comment on the line before a block steers it: `<!-- readme-test: file NAME -->` writes
//! the block into the scratch directory first (a profile the commands use);
//! `<!-- readme-test: output from "A" to "B" -->` compares only the lines of the real output from
//! the first that starts with A to the next that starts with B.
//!
//! When the output changes on purpose: `UPDATE_README=1 cargo test --test it readme::` writes the
//! real outputs into README.md; review the diff.

use crate::common::WithoutAmbient;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README commands run elsewhere: (command as written, without its comment; the file that runs
/// it or shows it was run; a string that file must contain; why not here).
const ELSEWHERE: &[(&str, &str, &str, &str)] = &[
    (
        "scripts/build-wheel.sh",
        ".ci/run",
        "scripts/build-wheel.sh",
        "a release build with zig: minutes",
    ),
    (
        "pip install target/wheels/vla_launch-*.whl",
        "scripts/wheel-check.sh",
        "pip install --quiet --disable-pip-version-check --no-index \"$wheel\"",
        "installs the wheel .ci/run built, with no Rust on PATH",
    ),
    ("cargo test", ".ci/run", "cargo test", "the suite itself"),
    (
        "vla-launch --profile aloha",
        "docs/validation.md",
        "four-plan",
        "a real launch: GPUs, torchrun and OpenVLA-OFT",
    ),
    (
        "vla-launch doctor --profile aloha",
        "tests/it/cli.rs",
        "\"doctor\"",
        "checks this machine's GPUs, torch and script: exits 4 without them",
    ),
    (
        "sbatch aloha.sbatch",
        "tests/it/slurm.rs",
        "scripts/slurm/finetune.sbatch",
        "needs a Slurm cluster (VLA_TEST_SLURM=1 in .ci/run)",
    ),
    (
        "sbatch --nodes=4 aloha.sbatch",
        "tests/it/slurm.rs",
        "scripts/slurm/finetune.sbatch",
        "needs a Slurm cluster (VLA_TEST_SLURM=1 in .ci/run)",
    ),
    (
        "vla-launch runs",
        "tests/it/firsthour_cli.rs",
        "fn runs_lists_past_launches_and_logs_prints_them",
        "needs a past run",
    ),
    (
        "vla-launch logs -f",
        "tests/it/firsthour_cli.rs",
        "fn logs_follow_a_running_launch_to_its_end",
        "needs a run",
    ),
];

/// A fenced block of the README: its language, the text of its steering comment, the index of
/// its first content line in the README, and its lines.
struct Block {
    lang: String,
    steer: Option<String>,
    first: usize,
    lines: Vec<String>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(lang) = lines[i].strip_prefix("```") {
            let steer = i
                .checked_sub(1)
                .map(|p| lines[p].trim())
                .and_then(|l| l.strip_prefix("<!-- readme-test:"))
                .and_then(|l| l.strip_suffix("-->"))
                .map(|l| l.trim().to_string());
            let first = i + 1;
            let mut end = first;
            while end < lines.len() && !lines[end].starts_with("```") {
                end += 1;
            }
            assert!(end < lines.len(), "README line {i}: unclosed ``` block");
            out.push(Block {
                lang: lang.trim().to_string(),
                steer,
                first,
                lines: lines[first..end].iter().map(|s| s.to_string()).collect(),
            });
            i = end + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// One README command: as written (comment removed), the exit code it must give, the README
/// lines of the output shown after it (a `console` block), and the block's steering comment.
struct Cmd {
    text: String,
    exits: i32,
    shown: Option<std::ops::Range<usize>>,
    steer: Option<String>,
    block: usize,
}

/// `cmd   # comment` -> (`cmd`, the code a `# exits N` comment names, else 0).
fn split_comment(line: &str) -> (String, i32) {
    let (cmd, comment) = match line.find(" # ") {
        Some(at) => (&line[..at], &line[at + 3..]),
        None => (line, ""),
    };
    let exits = comment
        .trim()
        .strip_prefix("exits ")
        .map(|n| n.trim().parse().expect("`# exits N` with a number"))
        .unwrap_or(0);
    (cmd.trim().to_string(), exits)
}

fn commands(blocks: &[Block]) -> Vec<Cmd> {
    let mut cmds = Vec::new();
    for (b, block) in blocks.iter().enumerate() {
        match block.lang.as_str() {
            "sh" => {
                let mut pending = String::new();
                for line in &block.lines {
                    let t = line.trim();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    if let Some(part) = t.strip_suffix('\\') {
                        pending.push_str(part);
                        continue;
                    }
                    pending.push_str(t);
                    let (text, exits) = split_comment(&pending);
                    pending.clear();
                    cmds.push(Cmd {
                        text,
                        exits,
                        shown: None,
                        steer: None,
                        block: b,
                    });
                }
            }
            "console" => {
                for (i, line) in block.lines.iter().enumerate() {
                    let Some(c) = line.strip_prefix("$ ") else {
                        continue;
                    };
                    let (text, exits) = split_comment(c);
                    let end = block.lines[i + 1..]
                        .iter()
                        .position(|l| l.starts_with("$ "))
                        .map_or(block.lines.len(), |p| i + 1 + p);
                    let shown = (end > i + 1).then(|| block.first + i + 1..block.first + end);
                    cmds.push(Cmd {
                        text,
                        exits,
                        shown,
                        steer: block.steer.clone(),
                        block: b,
                    });
                }
                assert!(
                    block.lines.first().is_some_and(|l| l.starts_with("$ ")),
                    "README line {}: a console block starts with a `$ ` command",
                    block.first
                );
            }
            _ => {}
        }
    }
    cmds
}

/// The lines of `real` a steering comment `output from "A" to "B"` selects, or all of them.
fn select(real: &str, steer: Option<&str>) -> Result<Vec<String>, String> {
    let lines: Vec<String> = real.lines().map(str::to_string).collect();
    let Some(spec) = steer.and_then(|s| s.strip_prefix("output from ")) else {
        return Ok(lines);
    };
    let quoted: Vec<&str> = spec.split('"').collect();
    let [_, from, _, to, _] = quoted[..] else {
        return Err(format!(
            "expected `output from \"A\" to \"B\"`, got {spec:?}"
        ));
    };
    let start = lines
        .iter()
        .position(|l| l.starts_with(from))
        .ok_or(format!("no line starts with {from:?}"))?;
    let end = lines[start..]
        .iter()
        .position(|l| l.starts_with(to))
        .ok_or(format!("no line after {from:?} starts with {to:?}"))?;
    Ok(lines[start..=start + end].to_vec())
}

/// A scratch directory that looks like a checkout to the commands, and a HOME of its own.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(crate::common::BIN, bin.join("vla-launch")).unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        for d in ["scripts", "launch-profiles"] {
            std::os::unix::fs::symlink(root().join(d), work.join(d)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Scratch { dir }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Runs `script` with bash; (exit code, stdout, stderr).
    fn run(&self, script: &str) -> (Option<i32>, String, String) {
        let mut path = self.dir.path().join("bin").into_os_string();
        path.push(":");
        path.push(crate::common::path());
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .current_dir(self.work())
            .without_ambient_topology()
            .env("PATH", path)
            .env("HOME", self.dir.path().join("home"))
            .env("VLA_LAUNCH_CACHE_DIR", self.dir.path().join("cache"))
            .env("NO_COLOR", "1");
        for (var, _) in std::env::vars() {
            let ours = var.starts_with("VLA_") && var != "VLA_LAUNCH_CACHE_DIR";
            if ours
                || var.starts_with("WANDB_")
                || var.starts_with("SLURM_")
                || [
                    "OPENVLA_OFT_DIR",
                    "XDG_CONFIG_HOME",
                    "PYTORCH_CUDA_ALLOC_CONF",
                ]
                .contains(&var.as_str())
            {
                cmd.env_remove(&var);
            }
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn every_readme_command_runs_and_shows_its_real_output() {
    let path = root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let blocks = blocks(&readme);
    let scratch = Scratch::new();
    for block in &blocks {
        if let Some(name) = block.steer.as_deref().and_then(|s| s.strip_prefix("file ")) {
            let text = block.lines.join("\n") + "\n";
            std::fs::write(scratch.work().join(name.trim()), text).unwrap();
        }
    }

    let cmds = commands(&blocks);
    assert!(
        cmds.len() >= 10,
        "found only {} README commands",
        cmds.len()
    );
    let mut failures = Vec::new();
    let mut replacements: Vec<(std::ops::Range<usize>, Vec<String>)> = Vec::new();
    let mut ran = 0;
    for (i, cmd) in cmds.iter().enumerate() {
        if let Some((_, file, needle, why)) = ELSEWHERE.iter().find(|e| e.0 == cmd.text) {
            eprintln!("readme: `{}` not run here ({why}): {file}", cmd.text);
            let text = std::fs::read_to_string(root().join(file)).unwrap_or_default();
            if !text.contains(needle) {
                failures.push(format!(
                    "`{}` is said to be run by {file}, which does not contain {needle:?}",
                    cmd.text
                ));
            }
            continue;
        }
        let shell = match cmd.text.strip_prefix("cargo run --release -- ") {
            Some(args) => format!("vla-launch {args}"),
            None => cmd.text.clone(),
        };
        // The exports before this command in its block, as a user's shell would have them.
        let exports: String = cmds[..i]
            .iter()
            .filter(|c| c.block == cmd.block && c.text.starts_with("export "))
            .map(|c| format!("{}\n", c.text))
            .collect();
        let (code, stdout, stderr) = scratch.run(&format!("set -euo pipefail\n{exports}{shell}"));
        ran += 1;
        if code != Some(cmd.exits) {
            failures.push(format!(
                "`{}` exited {code:?}, the README expects {}:\n{stdout}\n{stderr}",
                cmd.text, cmd.exits
            ));
            continue;
        }
        let Some(shown) = cmd.shown.clone() else {
            continue;
        };
        match select(&stdout, cmd.steer.as_deref()) {
            Err(e) => failures.push(format!("`{}`: {e}\n{stdout}", cmd.text)),
            Ok(real) => {
                let lines: Vec<&str> = readme.lines().collect();
                let readme_says = &lines[shown.clone()];
                if readme_says != real {
                    let at = (0..readme_says.len().max(real.len()))
                        .find(|&k| readme_says.get(k).copied() != real.get(k).map(String::as_str))
                        .unwrap_or(0);
                    failures.push(format!(
                        "README lines {}-{}: `{}` prints something else now; first at line {}:\n  README: {:?}\n  real:   {:?}",
                        shown.start + 1,
                        shown.end,
                        cmd.text,
                        shown.start + at + 1,
                        readme_says.get(at).copied().unwrap_or("(nothing)"),
                        real.get(at).map_or("(nothing)", String::as_str),
                    ));
                    replacements.push((shown, real));
                }
            }
        }
    }
    assert!(ran >= 8, "ran only {ran} README commands");

    if std::env::var_os("UPDATE_README").is_some() && !replacements.is_empty() {
        let mut lines: Vec<String> = readme.lines().map(str::to_string).collect();
        for (range, real) in replacements.into_iter().rev() {
            lines.splice(range, real);
        }
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        eprintln!("README.md: shown outputs rewritten from the real ones; review the diff");
        failures.retain(|f| !f.starts_with("README lines"));
    }
    assert!(
        failures.is_empty(),
        "{}\n\n(an output changed on purpose: UPDATE_README=1 cargo test --test it readme::)",
        failures.join("\n\n")
    );
}

/// The commands the README names but this test does not run are still in the README (a stale
/// entry would hide a new command that looks like it), and each says why.
#[test]
fn every_command_run_elsewhere_is_in_the_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let cmds = commands(&blocks(&readme));
    for (text, _, _, _) in ELSEWHERE {
        assert!(
            cmds.iter().any(|c| c.text == *text),
            "ELSEWHERE lists `{text}`, which the README no longer has"
        );
    }
}

/// The first screen: what it is, install, the two commands (the main job and the tests), before
/// any task section.
#[test]
fn first_screen_has_install_and_the_two_commands() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let first: String = readme.lines().take(40).collect::<Vec<_>>().join("\n");
    for want in [
        "## Install",
        "pip install target/wheels/vla_launch-*.whl",
        "vla-launch --profile aloha",
        "cargo run --release -- plan --profile aloha --gpus 4xrtx4090",
        "cargo test",
    ] {
        assert!(
            first.contains(want),
            "the README's first 40 lines lack {want:?}"
        );
    }
}

#[test]
fn comments_and_exit_codes_are_read_from_a_command_line() {
    assert_eq!(
        split_comment("vla-launch plan --gpus 1xrtx4090   # exits 3"),
        ("vla-launch plan --gpus 1xrtx4090".to_string(), 3)
    );
    assert_eq!(
        split_comment("scripts/build-wheel.sh   # prints target/wheels/x.whl"),
        ("scripts/build-wheel.sh".to_string(), 0)
    );
    let real = "a\nMemory budget\nx\n W=weights 1\nafter\n";
    assert_eq!(
        select(
            real,
            Some("output from \"Memory budget\" to \" W=weights\"")
        )
        .unwrap(),
        ["Memory budget", "x", " W=weights 1"]
    );
    assert_eq!(select(real, None).unwrap().len(), 5);
}
