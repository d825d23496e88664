#!/usr/bin/env bash
# Checks `vla-launch gpus` against nvidia-smi on a GPU machine and prints a markdown transcript
# (for docs/validation.md). Usage: scripts/gpu-discovery-check.sh /path/to/vla-launch
# Needs nvidia-smi and python3; the busy-GPU step also needs torch. Exit status 1 on a mismatch.
set -euo pipefail

BIN=${1:?usage: $0 /path/to/vla-launch}
BIN=$(realpath "$BIN")
WORK=$(mktemp -d)
HOLDER_PID=""
FAILED=0

cleanup() {
    if [[ -n "$HOLDER_PID" ]]; then kill "$HOLDER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# compare.py JSON_FILE SMI_CSV MODE [ARG]: checks one `gpus --json` output; prints markdown.
cat >"$WORK/compare.py" <<'PY'
import json, sys

gpus = json.load(open(sys.argv[1]))
smi = []
for line in open(sys.argv[2]):
    f = [x.strip() for x in line.split(",")]
    if len(f) >= 4:
        smi.append({"uuid": f[0], "total": int(f[1]), "free": int(f[2]), "bus": f[3].lower()})
by_bus = sorted(smi, key=lambda g: g["bus"])
mode, arg = sys.argv[3], (sys.argv[4] if len(sys.argv) > 4 else "")
MIB = 1 << 20
ok = True

if mode == "all":
    expected = [g["uuid"] for g in by_bus]
elif mode == "index":
    expected = [by_bus[int(arg)]["uuid"]]
elif mode == "prefix":
    expected = [g["uuid"] for g in smi if g["uuid"].startswith(arg)]
else:
    expected = [arg]
got = [g["uuid"] for g in gpus]
print(f"- expected UUIDs (PCI bus order): `{', '.join(expected)}`")
print(f"- listed UUIDs: `{', '.join(got)}`")
if got != expected:
    ok = False
    print("- **MISMATCH in the GPUs listed**")

print()
print("| idx | name | uuid | total MiB (ours / smi) | free MiB (ours / smi) | processes |")
print("|---|---|---|---|---|---|")
for g in gpus:
    s = next((x for x in smi if x["uuid"] == g["uuid"]), None)
    total, free = g["total_bytes"] // MIB, g["free_bytes"] // MIB
    procs = "; ".join(
        f"{p['pid']} {p.get('name') or '?'} {(p.get('used_bytes') or 0) / (1 << 30):.2f} GiB"
        for p in g.get("processes", [])
    ) or "-"
    if s is None:
        ok = False
        print(f"| {g['index']} | {g['name']} | {g['uuid']} | {total} / ? | {free} / ? | {procs} |")
        continue
    # Free memory moves between the two calls: 256 MiB of slack.
    if total != s["total"] or abs(free - s["free"]) > 256:
        ok = False
    print(f"| {g['index']} | {g['name']} | {g['uuid']} | {total} / {s['total']} | {free} / {s['free']} | {procs} |")
print()
print("- result: " + ("OK" if ok else "**MISMATCH**"))
sys.exit(0 if ok else 1)
PY

smi_csv() {
    nvidia-smi --query-gpu=uuid,memory.total,memory.free,pci.bus_id --format=csv,noheader,nounits >"$WORK/smi.csv"
}

# run_case TITLE MODE ARG [VAR=VALUE]: one `gpus --json` run compared with nvidia-smi.
run_case() {
    local title=$1 mode=$2 arg=$3
    shift 3
    echo "### $title"
    echo
    echo '```'
    echo "\$ ${*:+$* }vla-launch gpus --json"
    echo '```'
    smi_csv
    if env "$@" "$BIN" gpus --json >"$WORK/gpus.json" 2>"$WORK/gpus.err"; then
        python3 "$WORK/compare.py" "$WORK/gpus.json" "$WORK/smi.csv" "$mode" "$arg" || FAILED=1
    else
        echo "**vla-launch exited $?**"
        FAILED=1
    fi
    if [[ -s "$WORK/gpus.err" ]]; then
        echo
        echo "stderr:"
        echo '```'
        head -c 4000 "$WORK/gpus.err"
        echo '```'
    fi
    echo
}

echo "## GPU discovery check ($(date -u +%Y-%m-%dT%H:%MZ), $(hostname))"
echo
echo '```'
nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version --format=csv
echo '```'
echo

smi_csv
COUNT=$(wc -l <"$WORK/smi.csv")
FIRST_BY_BUS=$(sort -t, -k4 "$WORK/smi.csv" | head -1 | cut -d, -f1)

run_case "All GPUs" all "" 
if ((COUNT >= 2)); then
    run_case "CUDA_VISIBLE_DEVICES=1" index 1 CUDA_VISIBLE_DEVICES=1
fi
PREFIX=${FIRST_BY_BUS:0:12}
run_case "CUDA_VISIBLE_DEVICES=$PREFIX (UUID prefix)" prefix "$PREFIX" CUDA_VISIBLE_DEVICES="$PREFIX"

echo "### Time from process start to the GPU list"
echo
python3 - "$BIN" <<'PY'
import os, re, subprocess, sys, time
env = dict(os.environ, RUST_LOG="vla_launch=debug")
runs = []
for _ in range(5):
    t0 = time.perf_counter()
    p = subprocess.run([sys.argv[1], "gpus", "--json"], capture_output=True, text=True, env=env)
    runs.append((time.perf_counter() - t0) * 1000)
plain = re.sub(r"\x1b\[[0-9;]*m", "", p.stderr)  # tracing colours its fields
inner = re.findall(r"elapsed_ms[=:]\s*([0-9.]+)", plain)
print(f"- wall time of `vla-launch gpus --json`, 5 runs (ms): {', '.join(f'{r:.0f}' for r in runs)}")
print(f"- discovery itself (Discovery.elapsed_ms, last run): {inner[-1] + ' ms' if inner else 'not logged'}")
PY
echo

echo "### A process holding 20 GiB on GPU 0 ($FIRST_BY_BUS)"
echo
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    READY="$WORK/holder.ready"
    CUDA_VISIBLE_DEVICES="$FIRST_BY_BUS" python3 -c "
import torch, time, pathlib, sys
x = torch.empty(20 * 2**30, dtype=torch.uint8, device='cuda')
pathlib.Path(sys.argv[1]).write_text('ok')
time.sleep(600)
" "$READY" &
    HOLDER_PID=$!
    for _ in $(seq 120); do [[ -f "$READY" ]] && break; sleep 0.5; done
    echo "holder pid: $HOLDER_PID"
    echo
    echo '```'
    echo '$ vla-launch gpus'
    "$BIN" gpus || FAILED=1
    echo '```'
    echo
    run_case "Busy GPU, JSON" index 0 CUDA_VISIBLE_DEVICES=0
    python3 - "$WORK/gpus.json" "$HOLDER_PID" <<'PY' || FAILED=1
import json, sys
g = json.load(open(sys.argv[1]))[0]
pid = int(sys.argv[2])
mine = [p for p in g["processes"] if p["pid"] == pid]
gib = lambda b: b / (1 << 30)
print(f"- GPU 0: used {gib(g['used_bytes']):.2f} GiB, free {gib(g['free_bytes']):.2f} GiB of {gib(g['total_bytes']):.2f} GiB")
if mine:
    print(f"- holder process listed: pid {pid}, {gib(mine[0]['used_bytes'] or 0):.2f} GiB, name {mine[0].get('name')}")
else:
    print(f"- **holder process {pid} not listed** (a container may show host pids: {[p['pid'] for p in g['processes']]})")
ok = g["used_bytes"] >= 20 * (1 << 30) and g["free_bytes"] <= g["total_bytes"] - 20 * (1 << 30)
print("- result: " + ("OK (free memory reduced by the 20 GiB)" if ok else "**free memory not reduced**"))
sys.exit(0 if ok else 1)
PY
    echo
    echo "The plan accounts for it: the busy GPU 0 has only its free memory to offer."
    echo
    echo '```'
    echo '$ CUDA_VISIBLE_DEVICES=0,1 vla-launch plan --profile aloha-probe'
    CUDA_VISIBLE_DEVICES=0,1 "$BIN" plan --profile aloha-probe 2>&1 | sed -n '1,12p' || FAILED=1
    echo '$ CUDA_VISIBLE_DEVICES=0 vla-launch plan --profile aloha-probe --json | (usable_bytes, predicted_peak_bytes, batch)'
    CUDA_VISIBLE_DEVICES=0 "$BIN" plan --profile aloha-probe --json 2>/dev/null | python3 -c 'import json,sys; p=json.load(sys.stdin); g=p["gpus"][0]; print("free", round(g["free_bytes"]/2**30,2), "GiB; usable", round(p["usable_bytes"]/2**30,2), "GiB; predicted", round(p["predicted_peak_bytes"]/2**30,2), "GiB; batch", p["batch_size"], "x accum", p["grad_accumulation_steps"], "ckpt", p["gradient_checkpointing"])'
    echo '```'
    kill "$HOLDER_PID" 2>/dev/null || true
    wait "$HOLDER_PID" 2>/dev/null || true
    HOLDER_PID=""
else
    echo "skipped: python3 cannot import torch with CUDA here"
fi
echo
echo "**overall: $([[ $FAILED == 0 ]] && echo OK || echo FAILED)**"
exit "$FAILED"
