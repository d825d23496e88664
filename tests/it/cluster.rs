//! Slurm hostlists, topology from each environment, rendezvous port derivation.

use std::collections::HashMap;

use vla_launch::cluster::{
    ClusterError, PORT_BASE, PORT_SPAN, Rendezvous, Topology, TopologyFlags, parse_hostlist,
    port_for_job, topology_from_env,
};

#[test]
fn hostlists_expand_as_slurm_does() {
    let cases: &[(&str, &[&str])] = &[
        ("gpu01", &["gpu01"]),
        ("gpu01,gpu02", &["gpu01", "gpu02"]),
        (
            "gpu[01-04,07],gpu-b12",
            &["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "gpu-b12"],
        ),
        ("node[8-11]", &["node8", "node9", "node10", "node11"]),
        ("node[08-11]", &["node08", "node09", "node10", "node11"]),
        ("n[001-3]", &["n001", "n002", "n003"]),
        ("node[1-3]-ib", &["node1-ib", "node2-ib", "node3-ib"]),
        (
            "rack[1-2]-n[1-2]",
            &["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"],
        ),
        ("a[1,3],b[2],c", &["a1", "a3", "b2", "c"]),
        ("[1-2]x", &["1x", "2x"]),
        ("10.0.0.[1-2]", &["10.0.0.1", "10.0.0.2"]),
        (" gpu[1-2] ", &["gpu1", "gpu2"]),
    ];
    for (list, want) in cases {
        let got = parse_hostlist(list).unwrap_or_else(|e| panic!("{list}: {e}"));
        assert_eq!(got, *want, "hostlist {list:?}");
    }
}

#[test]
fn bad_hostlists_are_refused_with_the_list_named() {
    let cases = [
        ("", "empty"),
        ("gpu[01-04", "never closed"),
        ("gpu01-04]", "unmatched ']'"),
        ("gpu[[1-2]]", "nested"),
        ("gpu[4-1]", "backwards"),
        ("gpu[a-b]", "not a number"),
        ("gpu[]", "empty range"),
        ("gpu[1,,2]", "empty range"),
        ("gpu01,,gpu02", "empty entry"),
        ("n[0-99999999]", "more than"),
        ("n[1-300],m[1-300]", ""), // fine: 600 hosts
    ];
    for (list, why) in cases {
        let got = parse_hostlist(list);
        if list == "n[1-300],m[1-300]" {
            assert_eq!(got.unwrap().len(), 600);
            continue;
        }
        let err = got.expect_err(list).to_string();
        assert!(err.contains(why), "{list:?}: {err}");
        assert!(
            err.contains(&format!("{list:?}")),
            "message names the list: {err}"
        );
    }
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn topo(pairs: &[(&str, &str)], flags: &TopologyFlags) -> Result<Topology, ClusterError> {
    topology_from_env(&env_of(pairs), flags)
}

fn slurm_job(node_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SLURM_JOB_ID", "123456".into()),
        ("SLURM_NNODES", "4".into()),
        ("SLURM_JOB_NUM_NODES", "4".into()),
        ("SLURM_NODEID", node_id.to_string()),
        ("SLURM_JOB_NODELIST", "gpu[07-09],gpu-b12".into()),
        ("SLURM_GPUS_ON_NODE", "8".into()),
        ("SLURM_STEP_GPUS", "0,1,2,3,4,5,6,7".into()),
        ("SLURM_STEP_TASKS_PER_NODE", "1(x4)".into()),
    ]
}

fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, s)| (*k, s.as_str())).collect()
}

#[test]
fn no_environment_is_a_single_node() {
    assert_eq!(
        topo(&[], &TopologyFlags::default()).unwrap(),
        Topology::single_node()
    );
}

#[test]
fn slurm_job_gives_every_node_the_same_rendezvous() {
    let mut seen = Vec::new();
    for node in 0..4 {
        let env = slurm_job(&node.to_string());
        let t = topo(&as_refs(&env), &TopologyFlags::default()).unwrap();
        assert_eq!((t.nnodes, t.node_rank), (4, node));
        assert_eq!(t.source, "slurm job 123456");
        assert_eq!(t.slurm_job_id.as_deref(), Some("123456"));
        assert_eq!(t.slurm_gpus_on_node, Some(8));
        assert_eq!(t.slurm_step_gpus, Some((0..8).collect()));
        seen.push(t.rendezvous.unwrap());
    }
    let want = Rendezvous {
        backend: "c10d".into(),
        endpoint: format!("gpu07:{}", 20_000 + 123_456 % 9_000),
        id: "123456".into(),
    };
    assert!(seen.iter().all(|r| *r == want), "{seen:?}");
}

#[test]
fn one_node_slurm_job_is_standalone_but_keeps_the_job() {
    let t = topo(
        &[
            ("SLURM_JOB_ID", "77"),
            ("SLURM_NNODES", "1"),
            ("SLURM_NODEID", "0"),
            ("SLURM_JOB_NODELIST", "gpu03"),
            ("SLURM_GPUS_ON_NODE", "4"),
        ],
        &TopologyFlags::default(),
    )
    .unwrap();
    assert_eq!((t.nnodes, t.node_rank, t.rendezvous), (1, 0, None));
    assert_eq!(t.slurm_job_id.as_deref(), Some("77"));
    assert_eq!(t.slurm_gpus_on_node, Some(4));
}

#[test]
fn slurm_step_values_win_over_the_allocation() {
    // `srun -N2` inside a 4-node allocation: the step has 2 nodes.
    let t = topo(
        &[
            ("SLURM_JOB_ID", "9"),
            ("SLURM_JOB_NUM_NODES", "4"),
            ("SLURM_JOB_NODELIST", "n[1-4]"),
            ("SLURM_STEP_NUM_NODES", "2"),
            ("SLURM_STEP_NODELIST", "n[3-4]"),
            ("SLURM_NODEID", "1"),
        ],
        &TopologyFlags::default(),
    )
    .unwrap();
    assert_eq!((t.nnodes, t.node_rank), (2, 1));
    assert_eq!(
        t.rendezvous.unwrap().endpoint,
        format!("n3:{}", port_for_job("9"))
    );
}

#[test]
fn kubernetes_pytorchjob_world_size_counts_pods() {
    // PyTorchJob: one pod per node, WORLD_SIZE = pods, RANK = pod index.
    let env = [
        ("MASTER_ADDR", "train-master-0"),
        ("MASTER_PORT", "23456"),
        ("WORLD_SIZE", "3"),
        ("RANK", "2"),
    ];
    let t = topo(&env, &TopologyFlags::default()).unwrap();
    assert_eq!((t.nnodes, t.node_rank), (3, 2));
    assert_eq!(t.source, "torchrun env");
    let r = t.rendezvous.unwrap();
    assert_eq!(r.endpoint, "train-master-0:23456");
    assert_eq!(r.id, "vla-launch-train-master-0-23456");
    assert_eq!(t.slurm_job_id, None);
}

#[test]
fn nnodes_and_node_rank_win_over_world_size() {
    // With nprocPerNode set, WORLD_SIZE counts processes; PET_NNODES counts nodes.
    let env = [
        ("MASTER_ADDR", "10.1.2.3"),
        ("MASTER_PORT", "29500"),
        ("WORLD_SIZE", "16"),
        ("RANK", "9"),
        ("PET_NNODES", "2"),
        ("PET_NODE_RANK", "1"),
        ("PET_NPROC_PER_NODE", "8"),
    ];
    let t = topo(&env, &TopologyFlags::default()).unwrap();
    assert_eq!((t.nnodes, t.node_rank), (2, 1));
    // NNODES as torchrun takes it ("2:2" is a fixed elastic range).
    let t = topo(
        &[("MASTER_ADDR", "h"), ("NNODES", "2:2"), ("NODE_RANK", "0")],
        &TopologyFlags::default(),
    )
    .unwrap();
    assert_eq!((t.nnodes, t.node_rank), (2, 0));
    assert_eq!(t.rendezvous.unwrap().endpoint, "h:29400");
}

#[test]
fn in_slurm_world_size_is_not_read_as_nodes() {
    // sbatch scripts often export WORLD_SIZE = total processes.
    let mut env = slurm_job("2");
    env.push(("WORLD_SIZE", "32".into()));
    env.push(("RANK", "17".into()));
    env.push(("MASTER_ADDR", "gpu07".into()));
    let t = topo(&as_refs(&env), &TopologyFlags::default()).unwrap();
    assert_eq!((t.nnodes, t.node_rank), (4, 2));
    assert_eq!(t.source, "slurm job 123456");
    // MASTER_ADDR given without MASTER_PORT: the job's derived port.
    assert_eq!(
        t.rendezvous.unwrap().endpoint,
        format!("gpu07:{}", port_for_job("123456"))
    );
}

#[test]
fn flags_win_over_everything() {
    let mut env = slurm_job("3");
    env.push(("MASTER_ADDR", "elsewhere".into()));
    env.push(("MASTER_PORT", "1111".into()));
    let flags = TopologyFlags {
        nnodes: Some(2),
        node_rank: Some(1),
        rdzv_endpoint: Some("10.0.0.5:29999".into()),
        rdzv_port: None,
    };
    let t = topo(&as_refs(&env), &flags).unwrap();
    assert_eq!((t.nnodes, t.node_rank), (2, 1));
    assert_eq!(t.source, "flags");
    let r = t.rendezvous.unwrap();
    assert_eq!(r.endpoint, "10.0.0.5:29999");
    assert_eq!(r.id, "123456", "the Slurm job id stays the rendezvous id");

    // --rdzv-port alone overrides the derived port.
    let flags = TopologyFlags {
        rdzv_port: Some(31000),
        ..Default::default()
    };
    let t = topo(&as_refs(&slurm_job("0")), &flags).unwrap();
    assert_eq!(t.rendezvous.unwrap().endpoint, "gpu07:31000");
}

#[test]
fn endpoint_forms() {
    let cases = [
        ("host", "host:29400"),
        ("host:1234", "host:1234"),
        ("[::1]:1234", "[::1]:1234"),
        ("[fe80::2]", "[fe80::2]:29400"),
    ];
    for (given, want) in cases {
        let flags = TopologyFlags {
            nnodes: Some(2),
            node_rank: Some(0),
            rdzv_endpoint: Some(given.into()),
            rdzv_port: None,
        };
        let t = topo(&[], &flags).unwrap();
        assert_eq!(t.rendezvous.unwrap().endpoint, want, "{given}");
    }
}

#[test]
fn invalid_environments_name_the_variable_and_value() {
    let two = |endpoint: &str| TopologyFlags {
        nnodes: Some(2),
        node_rank: Some(0),
        rdzv_endpoint: Some(endpoint.into()),
        rdzv_port: None,
    };
    type Case = (
        Vec<(&'static str, &'static str)>,
        TopologyFlags,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            vec![
                ("SLURM_JOB_ID", "5"),
                ("SLURM_NNODES", "2"),
                ("SLURM_NODEID", "2"),
                ("SLURM_JOB_NODELIST", "n[1-2]"),
            ],
            TopologyFlags::default(),
            &[
                "node rank 2",
                "SLURM_NODEID",
                "node count 2",
                "SLURM_NNODES",
            ],
        ),
        (
            vec![
                ("SLURM_JOB_ID", "5"),
                ("SLURM_NNODES", "3"),
                ("SLURM_NODEID", "0"),
                ("SLURM_JOB_NODELIST", "n[1-2]"),
            ],
            TopologyFlags::default(),
            &["3 nodes", "SLURM_JOB_NODELIST", "2 hosts", "n[1-2]"],
        ),
        (
            vec![("SLURM_JOB_ID", "5"), ("SLURM_NNODES", "two")],
            TopologyFlags::default(),
            &["SLURM_NNODES=\"two\"", "whole number"],
        ),
        (
            vec![
                ("SLURM_JOB_ID", "5"),
                ("SLURM_NNODES", "2"),
                ("SLURM_NODEID", "0"),
                ("SLURM_JOB_NODELIST", "n[2-1]"),
            ],
            TopologyFlags::default(),
            &["SLURM_JOB_NODELIST", "backwards"],
        ),
        (
            vec![
                ("SLURM_JOB_ID", "5"),
                ("SLURM_NNODES", "2"),
                ("SLURM_NODEID", "0"),
                ("SLURM_STEP_TASKS_PER_NODE", "8(x2)"),
            ],
            TopologyFlags::default(),
            &["SLURM_STEP_TASKS_PER_NODE=\"8(x2)\"", "one task per node"],
        ),
        (
            vec![("SLURM_JOB_ID", "5"), ("SLURM_STEP_GPUS", "0,x")],
            TopologyFlags::default(),
            &["SLURM_STEP_GPUS", "\"x\""],
        ),
        (
            vec![("MASTER_ADDR", "h"), ("NNODES", "1:4")],
            TopologyFlags::default(),
            &["NNODES=\"1:4\"", "elastic"],
        ),
        (
            vec![
                ("MASTER_ADDR", "h"),
                ("NNODES", "2"),
                ("NODE_RANK", "0"),
                ("MASTER_PORT", "70000"),
            ],
            TopologyFlags::default(),
            &["MASTER_PORT=\"70000\""],
        ),
        (
            vec![("MASTER_ADDR", "h"), ("NNODES", "2")],
            TopologyFlags::default(),
            &["--node-rank", "NODE_RANK"],
        ),
        (
            vec![],
            TopologyFlags {
                nnodes: Some(2),
                node_rank: Some(1),
                ..Default::default()
            },
            &["--rdzv-endpoint", "MASTER_ADDR"],
        ),
        (
            vec![],
            TopologyFlags {
                nnodes: Some(0),
                ..Default::default()
            },
            &["--nnodes=\"0\""],
        ),
        (
            vec![],
            TopologyFlags {
                nnodes: Some(2),
                node_rank: Some(5),
                rdzv_endpoint: Some("h".into()),
                ..Default::default()
            },
            &["node rank 5", "--node-rank", "--nnodes"],
        ),
        (
            vec![],
            two("h:0"),
            &["--rdzv-endpoint=\"h:0\"", "1 to 65535"],
        ),
        (vec![], two(":80"), &["host is empty"]),
        (vec![], two("fe80::1:80"), &["brackets"]),
        (
            vec![],
            TopologyFlags {
                rdzv_port: Some(2),
                ..two("h:1")
            },
            &["--rdzv-port=\"2\"", "port 1"],
        ),
        (
            vec![("LOCAL_RANK", "0"), ("TORCHELASTIC_RUN_ID", "x")],
            TopologyFlags::default(),
            &["inside a torchrun worker", "LOCAL_RANK"],
        ),
    ];
    for (env, flags, wants) in cases {
        let err = topo(&env, &flags)
            .expect_err(&format!("{env:?} {flags:?}"))
            .to_string();
        for want in wants {
            assert!(
                err.contains(want),
                "{env:?} {flags:?}: {err:?} lacks {want:?}"
            );
        }
    }
}

#[test]
fn ports_are_derived_from_the_job_id_within_range() {
    assert_eq!(port_for_job("0"), PORT_BASE);
    assert_eq!(port_for_job("123456"), 20_000 + (123_456 % 9_000) as u16);
    assert_eq!(port_for_job("9000"), PORT_BASE, "the range wraps");
    // Consecutive jobs (the usual case on a shared node) never share a port.
    let ports: std::collections::BTreeSet<u16> = (5_000_000..5_000_000 + u64::from(PORT_SPAN))
        .map(|id| port_for_job(&id.to_string()))
        .collect();
    assert_eq!(ports.len(), usize::from(PORT_SPAN));
    for id in ["0", "18446744073709551615", "not-a-number", "job_7"] {
        let p = port_for_job(id);
        assert!(
            (PORT_BASE..PORT_BASE + PORT_SPAN).contains(&p),
            "{id} -> {p}"
        );
        assert!(
            p < 29_400,
            "below torchrun defaults and the ephemeral range"
        );
    }
    assert_eq!(port_for_job("job_7"), port_for_job("job_7"));
}

/// A scratch directory with stand-ins for Slurm's commands on PATH, to run the shipped sbatch
/// without Slurm.
struct StandIns {
    dir: tempfile::TempDir,
}

impl StandIns {
    fn new() -> StandIns {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        StandIns { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The stand-in `name`, a bash script running `body`.
    fn stub(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path("bin").join(name);
        std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Shell lines for a stand-in: create `mark`, then wait for the test's `go` (or for the
    /// test's directory to be gone: a test that failed early never leaves a stand-in behind).
    fn mark_then_wait(&self, mark: &str, go: &str) -> String {
        format!(
            "touch '{}'; while [ -d '{}' ] && [ ! -e '{}' ]; do sleep 0.02; done",
            self.path(mark).display(),
            self.dir.path().display(),
            self.path(go).display()
        )
    }

    /// Until the stand-in has created `mark`.
    fn wait_mark(&self, mark: &str, what: &str) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.path(mark).exists() {
            assert!(std::time::Instant::now() < until, "{what} never ran");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn go(&self, go: &str) {
        std::fs::write(self.path(go), "").unwrap();
    }

    /// The shipped sbatch as job 7, the stand-ins first on PATH.
    fn sbatch(
        &self,
        out: impl Into<std::process::Stdio>,
        err: impl Into<std::process::Stdio>,
    ) -> std::process::Child {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap()
        );
        std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/slurm/finetune.sbatch"
            ))
            .env("PATH", path)
            .env("SLURM_JOB_ID", "7")
            .env("WANDB_ENTITY", "e")
            .env("WANDB_PROJECT", "p")
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap()
    }
}

fn sigusr1(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
}

/// The shipped sbatch survives Slurm's SIGUSR1 arriving at once (a --time under the signal's
/// lead: the signal can come in the job's first second), while the script still works out its
/// time limit (squeue), before its requeue trap exists: it used to die of the signal (exit 138,
/// seen in CI's Slurm suite). Stand-ins for squeue, scontrol and srun; the test sends the signal
/// while squeue runs (the stand-in says so, then waits for the test's go).
#[test]
fn the_shipped_sbatch_holds_an_early_sigusr1() {
    let s = StandIns::new();
    s.stub(
        "squeue",
        &format!("{}; echo 2:00", s.mark_then_wait("asked", "go")),
    );
    s.stub("scontrol", "echo \"scontrol $*\" >&2");
    s.stub("srun", "echo srun ran");
    let child = s.sbatch(std::process::Stdio::piped(), std::process::Stdio::piped());
    s.wait_mark("asked", "squeue");
    sigusr1(&child);
    s.go("go");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("not requeueing job 7"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("srun ran"));
}

/// Runs the shipped sbatch with stand-ins: `squeue` says `time_limit`, `scontrol` exits with
/// `scontrol_rc`, and `srun` (started in the background) says that it runs, waits for the test's
/// go, then exits 3. The test sends SIGUSR1 to the batch shell while it waits for srun, and
/// gives srun its go once the shell has printed `trap_said` (or has ended). Returns the shell's
/// exit code and what it printed.
fn sbatch_signalled_while_srun_runs(
    time_limit: &str,
    scontrol_rc: i32,
    trap_said: &str,
) -> (Option<i32>, String) {
    let s = StandIns::new();
    s.stub("squeue", &format!("echo {time_limit}"));
    s.stub(
        "scontrol",
        &format!("echo \"scontrol $*\" >&2; exit {scontrol_rc}"),
    );
    s.stub(
        "srun",
        &format!(
            "{}; echo srun ends; exit 3",
            s.mark_then_wait("running", "go")
        ),
    );
    let log = s.path("log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = s.sbatch(file.try_clone().unwrap(), file);
    s.wait_mark("running", "srun");
    sigusr1(&child);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::fs::read_to_string(&log).unwrap().contains(trap_said) {
            break None;
        }
        assert!(std::time::Instant::now() < until, "the trap never ran");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    s.go("go");
    let status = status.unwrap_or_else(|| child.wait().unwrap());
    (status.code(), std::fs::read_to_string(&log).unwrap())
}

/// A SIGUSR1 while the batch shell waits for srun must leave the job running until srun ends
/// (the job's end is srun's): with a --time under the lead the trap says `not requeueing` and
/// returns; bash 5.2 under `set -e` made a bare `return` in a trap handler return the
/// interrupted `wait`'s 138, and the shell died of errexit at once (the job FAILED 138:0 within a
/// second of the signal, ending training that the message said would run to its time limit).
#[test]
fn the_shipped_sbatch_keeps_waiting_for_srun_after_a_sigusr1_it_does_not_requeue_for() {
    let (code, text) = sbatch_signalled_while_srun_runs("2:00", 0, "not requeueing");
    assert!(text.contains("not requeueing job 7"), "{text}");
    assert!(text.contains("srun ends"), "{text}");
    assert_eq!(code, Some(3), "the shell's exit must be srun's: {text}");
}

/// The same when the requeue itself fails (`scontrol requeue` exits 1): the job runs on to its
/// time limit, as the message says.
#[test]
fn the_shipped_sbatch_keeps_waiting_for_srun_when_scontrol_requeue_fails() {
    let (code, text) = sbatch_signalled_while_srun_runs("1-00:00:00", 1, "scontrol requeue failed");
    assert!(text.contains("scontrol requeue 7"), "{text}");
    assert!(text.contains("scontrol requeue failed"), "{text}");
    assert!(text.contains("srun ends"), "{text}");
    assert_eq!(code, Some(3), "the shell's exit must be srun's: {text}");
}
