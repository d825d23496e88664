//! scripts/probe/memtrace.py's replay of allocator events (the part that runs without a GPU):
//! the loop's peak, what is alive then, grouped by the allocating line.

use std::process::Command;

fn summarize(events: &str) -> serde_json::Value {
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let code = format!(
        "import json, sys; sys.path.insert(0, {scripts:?}); from probe import memtrace; \
         print(json.dumps(memtrace.summarize(json.loads(sys.stdin.read()))))"
    );
    let mut child = Command::new("python3")
        .env("PATH", crate::common::path())
        .args(["-c", &code])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(events.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Frames innermost first, as torch's snapshots hold them.
fn frames(line: u32) -> String {
    format!(
        r#"[{{"filename": "/venv/lib/python3.12/site-packages/torch/nn/functional.py", "line": 10, "name": "linear"}},
            {{"filename": "/venv/lib/python3.12/site-packages/transformers/models/llama/modeling_llama.py", "line": {line}, "name": "forward"}}]"#
    )
}

#[test]
fn the_peak_and_what_is_alive_then() {
    let events = format!(
        r#"[
        {{"action": "free_requested", "addr": 99, "size": 1000}},
        {{"action": "alloc", "addr": 1, "size": 100, "frames": {a}}},
        {{"action": "alloc", "addr": 2, "size": 50, "frames": {b}}},
        {{"action": "free_requested", "addr": 1, "size": 100}},
        {{"action": "free_completed", "addr": 1, "size": 100}},
        {{"action": "alloc", "addr": 3, "size": 120, "frames": {a}}},
        {{"action": "alloc", "addr": 4, "size": 30, "frames": []}},
        {{"action": "free_requested", "addr": 3, "size": 120}},
        {{"action": "alloc", "addr": 5, "size": 10, "frames": {a}}}
    ]"#,
        a = frames(666),
        b = frames(87)
    );
    let s = summarize(&events);
    // A block from before the recording (addr 99) is not counted when freed; a free counts at
    // its request; the peak is 50 + 120 + 30 after the fourth alloc.
    assert_eq!(s["peak_bytes"], 200, "{s}");
    assert_eq!(s["live_at_peak"], 3, "{s}");
    assert_eq!(s["peak_allocated_by"], "<no python frame>", "{s}");
    let groups = s["groups"].as_array().unwrap();
    assert_eq!(
        groups[0]["key"],
        "llama/modeling_llama.py:666 forward | nn/functional.py:10 linear"
    );
    assert_eq!(groups[0]["bytes"], 120);
    assert_eq!(
        groups[1]["key"],
        "llama/modeling_llama.py:87 forward | nn/functional.py:10 linear"
    );
    assert_eq!(groups[2]["bytes"], 30);
    let total: u64 = groups.iter().map(|g| g["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, 200);
}
