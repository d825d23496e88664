"""What is alive at the training loop's allocator peak, grouped by the line that allocated it.

Both probes call `start()` before their training loop and `finish()` after it. With
`VLA_PROBE_MEMTRACE=DIR` set, the CUDA caching allocator records every allocation and free of the
loop with its Python stack (`torch.cuda.memory._record_memory_history`); `finish` replays the
events, finds the moment the loop's own live bytes peak, and writes `DIR/rank<R>.json`: the live
allocations at that moment grouped by (first frame outside torch, innermost frame), largest first.
Two such files (real code vs stand-in probe) say which tensors one keeps and the other does not.
`VLA_PROBE_MEMTRACE_PICKLE=1` also writes the raw snapshot (`rank<R>.pickle`, large) for
pytorch.org/memory_viz. Unset: nothing is recorded and nothing changes.

`python3 -m probe.memtrace A.json B.json` prints the groups side by side (bytes of A - B).
"""

from __future__ import annotations

import collections
import json
import os
import sys

ENV = "VLA_PROBE_MEMTRACE"


def start() -> str | None:
    out = os.environ.get(ENV)
    if not out:
        return None
    import torch

    torch.cuda.memory._record_memory_history(enabled="all", context="all", stacks="python", max_entries=4_000_000)
    return out


def finish(out: str | None, rank: int, device: int) -> None:
    if not out:
        return
    import torch

    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    os.makedirs(out, exist_ok=True)
    summary = summarize(snap["device_traces"][device])
    summary["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if os.environ.get(ENV + "_PICKLE") == "1":
        import pickle

        with open(os.path.join(out, f"rank{rank}.pickle"), "wb") as f:
            pickle.dump(snap, f)
    print(
        f"[rank {rank}] memtrace: {summary['events']} events, loop peak {summary['peak_bytes']} B live "
        f"({len(summary['groups'])} groups) -> {out}/rank{rank}.json",
        file=sys.stderr,
        flush=True,
    )


def _where(frame: dict) -> str:
    name = frame.get("filename", "?")
    parts = name.replace("\\", "/").split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else name
    return f"{short}:{frame.get('line', '?')} {frame.get('name', '?')}"


def _outside_torch(frame: dict) -> bool:
    return "/torch/" not in frame.get("filename", "").replace("\\", "/")


def group_key(frames: list[dict]) -> str:
    """Frames come innermost first. The key names the first frame outside torch (the model's line)
    and the innermost frame (the op's Python entry), e.g. 'llama/modeling_llama.py:666 forward |
    <same>'; allocations without a Python stack (autograd's backward thread) are '<no python frame>'."""
    if not frames:
        return "<no python frame>"
    outer = next((f for f in frames if _outside_torch(f)), frames[-1])
    inner = frames[0]
    return _where(outer) if outer is inner else f"{_where(outer)} | {_where(inner)}"


def summarize(events: list[dict], top: int = 80) -> dict:
    """Replays alloc/free events (a free counts at its request, as the allocator's own
    `allocated_bytes` does; blocks allocated before recording started are not counted) and groups
    what is alive at the peak of the replayed live bytes."""
    live: dict[int, int] = {}
    cur = peak = 0
    peak_at = -1
    for i, e in enumerate(events):
        action = e.get("action")
        if action == "alloc":
            live[e["addr"]] = e["size"]
            cur += e["size"]
            if cur > peak:
                peak, peak_at = cur, i
        elif action in ("free_requested", "free_completed"):
            size = live.pop(e["addr"], None)
            if size is not None:
                cur -= size
    alive: dict[int, dict] = {}
    for e in events[: peak_at + 1]:
        action = e.get("action")
        if action == "alloc":
            alive[e["addr"]] = e
        elif action in ("free_requested", "free_completed"):
            alive.pop(e["addr"], None)
    groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for e in alive.values():
        g = groups[group_key(e.get("frames") or [])]
        g[0] += e["size"]
        g[1] += 1
        g[2] = max(g[2], e["size"])
    ordered = sorted(groups.items(), key=lambda kv: -kv[1][0])
    peak_frames = events[peak_at].get("frames") or [] if peak_at >= 0 else []
    return {
        "events": len(events),
        "peak_bytes": peak,
        "peak_event": peak_at,
        "peak_allocated_by": group_key(peak_frames),
        "live_at_peak": len(alive),
        "groups": [{"key": k, "bytes": b, "count": n, "largest": m} for k, (b, n, m) in ordered[:top]],
        "groups_left_out_bytes": sum(b for _, (b, _, _) in ordered[top:]),
    }


def compare(a: dict, b: dict) -> str:
    """Groups of two summaries, matched by key, sorted by |a - b|; bytes in MiB."""
    ga = {g["key"]: g for g in a["groups"]}
    gb = {g["key"]: g for g in b["groups"]}
    rows = []
    for k in set(ga) | set(gb):
        x, y = ga.get(k, {"bytes": 0, "count": 0}), gb.get(k, {"bytes": 0, "count": 0})
        rows.append((x["bytes"] - y["bytes"], k, x, y))
    rows.sort(key=lambda r: -abs(r[0]))
    mib = 1 << 20
    lines = [
        f"peak live: A {a['peak_bytes'] / mib:.1f} MiB, B {b['peak_bytes'] / mib:.1f} MiB, "
        f"A - B {(a['peak_bytes'] - b['peak_bytes']) / mib:+.1f} MiB",
        f"{'A-B MiB':>9} {'A MiB':>9} {'n':>5} {'B MiB':>9} {'n':>5}  group",
    ]
    for d, k, x, y in rows:
        lines.append(
            f"{d / mib:+9.1f} {x['bytes'] / mib:9.1f} {x['count']:5d} {y['bytes'] / mib:9.1f} {y['count']:5d}  {k}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python3 -m probe.memtrace A.json B.json", file=sys.stderr)
        sys.exit(2)
    with open(sys.argv[1]) as fa, open(sys.argv[2]) as fb:
        print(compare(json.load(fa), json.load(fb)))
