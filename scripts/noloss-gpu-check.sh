#!/usr/bin/env bash
# GPU check for issue 14 (items 4 and 5): whatever kills the launcher, no process of the run
# survives on the GPU.
#
#   scripts/noloss-gpu-check.sh /path/to/vla-launch [GRACE_S]
#
# Needs only python3, torch (with CUDA), torchrun on PATH and the launcher binary. Each phase
# launches a tiny random-weight trainer on GPU 0 through the real launcher and real torchrun;
# rank 0 also starts a `setsid` grandchild and a worker that ignores SIGTERM, both holding GPU
# memory, and two that escape (issue 25 items 3-4): one with a wiped environment (`env -i`, so no
# marker variable) that ignores SIGTERM, and one that double-forks into a session of its own with a
# wiped environment. Then the process-death matrix of issue 25, one phase each:
#   normal:        the trainer ends by itself (exit 0) while its escaped processes live on
#   sigterm:       SIGTERM to the launcher (a plain `kill`; expects exit 143)
#   sighup:        SIGHUP to the launcher (expects exit 129)
#   pty:           the launcher runs on a pseudo-terminal whose master is closed (an SSH drop)
#   kill-early:    SIGKILL to the launcher as soon as torchrun's rank 0 has started
#   kill-ready:    SIGKILL mid-training (what the OOM killer or a hard scheduler kill does)
#   kill-stopping: SIGTERM, then SIGKILL while the stop's grace runs
#   stop-kill:     SIGSTOP, then SIGKILL
#   watchdog:      the run's watchdog is SIGKILLed first (a new one must take over), then SIGKILL
#   nocgroup:      no cgroup for the run (VLA_LAUNCH_NO_CGROUP=1, as for a user who may not make
#                  one): SIGKILL once the watchdog's process set (it looks once a second) holds
#                  every process of the run, so the double-forked `env -i` one is ended from it
# and it checks that within GRACE_S + 5 s no process of the run is alive (by pid, and by the
# run's marker variable in /proc/*/environ), that nvidia-smi lists none of them, and that the run's
# record has an outcome. PHASES=... (space-separated names) runs a subset; VLA_LAUNCH_NO_CGROUP=1
# in the environment runs the matrix without the per-run cgroup; NOLOSS_DEVICE=cpu tries the script
# itself on a machine without a GPU.
# Prints one summary line per phase; exit status 0 when every phase passed.
set -uo pipefail

BIN=$(readlink -f "${1:?usage: $0 /path/to/vla-launch [GRACE_S]}")
GRACE=${2:-5}
LIMIT=$((GRACE + 5))
WORK=$(mktemp -d /tmp/noloss-gpu-check.XXXXXX)
TORCHRUN=$(command -v torchrun) || { echo "torchrun not on PATH"; exit 2; }
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
FAILED=0

cat >"$WORK/train.py" <<'PY'
"""Tiny random-weight trainer for noloss-gpu-check.sh: trains until killed; rank 0 also starts a
setsid grandchild and a SIGTERM-ignoring worker that hold GPU memory."""
import argparse, os, subprocess, sys, time

FLAGS = """vla_path data_root_dir dataset_name run_root_dir use_l1_regression use_diffusion use_film
num_images_in_input use_proprio learning_rate num_steps_before_decay max_steps use_val_set
save_freq image_aug lora_rank merge_lora_during_training run_id_note batch_size
grad_accumulation_steps use_fsdp gradient_checkpointing use_lora lora_dropout""".split()
parser = argparse.ArgumentParser()
for f in FLAGS:
    parser.add_argument(f"--{f}")
args, _ = parser.parse_known_args()  # --help lists every flag and exits here

import torch  # noqa: E402

rank = int(os.environ.get("LOCAL_RANK", "0"))
dev = torch.device(f"cuda:{rank}" if os.environ.get("NOLOSS_DEVICE") != "cpu" else "cpu")
pids_file = os.environ["NOLOSS_PIDS"]
HOLD = """
import os, signal, sys, time, torch
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
x = torch.ones(64 << 20, device="cpu" if os.environ.get("NOLOSS_DEVICE") == "cpu" else "cuda:0")  # 256 MiB
open(sys.argv[2], "a").write(f"up {os.getpid()}\\n")
while True:
    time.sleep(0.1)
"""
if rank == 0:
    with open(pids_file, "a") as f:
        f.write(f"marker {os.environ.get('VLA_LAUNCH_RUN', '')}\n")
        f.write(f"pid {os.getppid()} torchrun\npid {os.getpid()} rank0\n")
    kids = [
        subprocess.Popen([sys.executable, "-c", HOLD, "ignore", pids_file]),
        subprocess.Popen([sys.executable, "-c", HOLD, "setsid", pids_file], start_new_session=True),
    ]
    # Escapes: no marker in their environment; they write their own pids.
    q = pids_file.replace("'", "")
    subprocess.Popen(["env", "-i", "/bin/bash", "-c",
                      f"trap '' TERM; echo \"pid $$ env-i-sigterm-ignoring\" >> '{q}'; exec -a NOLOSS_ESCAPE sleep 600"])
    subprocess.Popen(["setsid", "/bin/bash", "-c",
                      f"(env -i /bin/bash -c \"trap '' TERM; echo pid \\$\\$ double-forked-env-i >> '{q}'; exec -a NOLOSS_ESCAPE sleep 600\" &)"])
    with open(pids_file, "a") as f:
        f.write(f"pid {kids[0].pid} sigterm-ignoring-worker\npid {kids[1].pid} setsid-grandchild\n")
    while open(pids_file).read().count("up ") < 2 or "double-forked" not in open(pids_file).read() \
            or "env-i-sigterm" not in open(pids_file).read():
        time.sleep(0.05)
model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10)).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
step = 0
while True:
    x = torch.randn(256, 1024, device=dev)
    loss = model(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    if args.max_steps and step >= int(args.max_steps):
        print(f"done after {step} steps", flush=True)
        break
    if step % 50 == 0:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        print(f"step {step} loss {loss.item():.4f}", flush=True)
        if step == 100 and rank == 0:
            open(pids_file, "a").write("ready\n")
    time.sleep(0.002)
PY

cat >"$WORK/profile.yaml" <<YAML
description: noloss GPU check (tiny random-weight trainer)
script:
  path: $WORK/train.py
  workdir: $WORK
  python: python3
  torchrun: $TORCHRUN
  accepts: [use_fsdp, gradient_checkpointing]
model:
  preset: openvla-7b
  lora_dtype: bf16
  prompt_tokens: 23
train:
  vla_path: openvla/openvla-7b
  data_root_dir: /tmp
  dataset_name: aloha1_put_X_into_pot_300_demos
  run_root_dir: $WORK/runs
  use_l1_regression: true
  use_diffusion: false
  use_film: true
  num_images_in_input: 3
  use_proprio: true
  learning_rate: 5.0e-4
  num_steps_before_decay: 50000
  max_steps: 1000000
  use_val_set: false
  save_freq: 10000
  image_aug: true
  lora_rank: 32
  merge_lora_during_training: false
  run_id_note: noloss
planning:
  min_global_batch: 1
  strategies: [ddp, fsdp]
  allocator: expandable_segments
YAML

cat >"$WORK/pty_run.py" <<'PY'
"""Runs argv[2:] on a new pseudo-terminal; once the pids file (argv[1]) says ready, closes the
master (the terminal goes away) and reports the launcher's exit and how long it took."""
import os, pty, select, sys, time
pids_file = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        try:
            os.read(fd, 65536)
        except OSError:
            break
    if os.path.exists(pids_file) and "ready" in open(pids_file).read():
        break
os.close(fd)
t0 = time.monotonic()
_, status = os.waitpid(pid, 0)
print(f"{os.waitstatus_to_exitcode(status)} {time.monotonic() - t0:.2f}", flush=True)
PY

# Run pids (from the trainer's file) and processes carrying the run's marker that are alive.
alive_of_run() {
  local pids=$1 marker p out=()
  marker=$(awk '$1 == "marker" {print $2; exit}' "$pids")
  for p in $(awk '$1 == "pid" {print $2}' "$pids"); do
    if [[ -e /proc/$p ]] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then out+=("$p"); fi
  done
  if [[ -n $marker ]]; then
    for p in /proc/[0-9]*; do
      { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qx "VLA_LAUNCH_RUN=$marker" && out+=("${p#/proc/}")
    done
  fi
  printf '%s\n' "${out[@]}" | sort -un | tr '\n' ' '
}

gpu_pids_of_run() {
  local pids=$1 gpu
  gpu=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | tr -d ' ')
  for p in $(awk '$1 == "pid" {print $2}' "$pids"); do grep -qx "$p" <<<"$gpu" && echo -n "$p "; done
}

wait_ready() {
  local pids=$1 launcher=$2
  for _ in $(seq 1 3000); do
    grep -qx ready "$pids" 2>/dev/null && return 0
    kill -0 "$launcher" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# report PHASE PIDS T0_NS: waits up to LIMIT s for the run to be gone, prints the summary line.
report() {
  local phase=$1 pids=$2 t0=$3 left gone_ms gpu verdict=PASS
  left=$(alive_of_run "$pids")
  while [[ -n ${left// /} ]] && (($(date +%s%N) - t0 < LIMIT * 1000000000)); do
    sleep 0.1
    left=$(alive_of_run "$pids")
  done
  gone_ms=$((($(date +%s%N) - t0) / 1000000))
  sleep 1 # let the driver release the memory
  gpu=$(gpu_pids_of_run "$pids")
  [[ -n ${left// /} || -n ${gpu// /} ]] && verdict=FAIL && FAILED=1
  local how="all gone ${gone_ms} ms after it"
  [[ -n ${left// /} ]] && how="still alive after ${gone_ms} ms: [${left% }]"
  echo "$phase: $verdict: $(grep -c '^pid ' "$pids") processes of the run, $how (limit ${LIMIT} s); on the GPU per nvidia-smi: [${gpu% }]; compute apps now: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)"
  if [[ -n ${left// /} ]]; then
    for p in $left; do kill -KILL "$p" 2>/dev/null; done
  fi
}

echo "noloss-gpu-check: $("$BIN" --version 2>&1), torch $(python3 -c 'import torch; print(torch.__version__)' 2>&1), GPU $(nvidia-smi --query-gpu=name --format=csv,noheader -i 0), grace ${GRACE} s"

# The record's outcome (its diagnosis kind, or "none").
record_outcome() {
  python3 - "$1" <<'PYREC'
import glob, json, sys
recs = sorted(glob.glob(sys.argv[1] + "/plan-*.json"))
try:
    o = json.load(open(recs[-1])).get("outcome") if recs else None
except (OSError, ValueError) as e:
    o = {"error": str(e)}
print("none" if not o else (o.get("diagnosis") or {}).get("kind") or o.get("exit_code", "?"))
PYREC
}

# phase NAME: starts a run, ends it the phase's way, reports.
phase() {
  local name=$1 d=$WORK/$1 launcher code expect="" t0 wd extra=()
  mkdir -p "$d"
  [[ $name == normal ]] && extra=(--set train.max_steps=300)
  [[ ${NOLOSS_DEVICE:-} == cpu ]] && extra+=(--gpus 1xh100)
  if [[ $name == pty ]]; then
    t0=$(date +%s%N)
    result=$(NOLOSS_PIDS=$d/pids python3 "$WORK/pty_run.py" "$d/pids" "$BIN" --profile "$WORK/profile.yaml" \
      --log-dir "$d/logs" --grace "$GRACE" "${extra[@]}")
    if ! grep -qx ready "$d/pids" 2>/dev/null; then echo "pty: FAIL: the trainer never became ready: $result"; FAILED=1; return; fi
    read -r code secs <<<"$result"
    echo "pty: the launcher exited with $code ${secs} s after its terminal closed (129 = 128 + SIGHUP expected)"
    [[ $code == 129 ]] || FAILED=1
    t0=$(($(date +%s%N) - ${secs/./} * 10000000)) # the terminal closed secs before now
    report pty "$d/pids" "$t0"
    echo "  record's outcome: $(record_outcome "$d/logs")"
    return
  fi
  local envs=(NOLOSS_PIDS="$d/pids")
  [[ $name == nocgroup ]] && envs+=(VLA_LAUNCH_NO_CGROUP=1 VLA_LAUNCH_WATCHDOG_SET_FILE="$d/tracked")
  env "${envs[@]}" "$BIN" --profile "$WORK/profile.yaml" --log-dir "$d/logs" --grace "$GRACE" "${extra[@]}" \
    >"$d/stdout" 2>"$d/stderr" &
  launcher=$!
  if [[ $name == kill-early ]]; then
    for _ in $(seq 1 3000); do grep -q rank0 "$d/pids" 2>/dev/null && break; sleep 0.02; done
    grep -q rank0 "$d/pids" 2>/dev/null || { echo "$name: FAIL: rank 0 never started; see $d/stderr"; FAILED=1; kill -TERM "$launcher" 2>/dev/null; return; }
  elif ! wait_ready "$d/pids" "$launcher"; then
    if [[ $name == normal ]] && ! kill -0 "$launcher" 2>/dev/null; then :; else
      echo "$name: FAIL: the trainer never became ready; see $d/stderr"; FAILED=1
      kill -TERM "$launcher" 2>/dev/null; return
    fi
  fi
  echo "pid $launcher launcher" >>"$d/pids"
  case $name in
    normal) expect=0 ;;
    sigterm) kill -TERM "$launcher"; expect=143 ;;
    sighup) kill -HUP "$launcher"; expect=129 ;;
    kill-early | kill-ready) kill -KILL "$launcher" ;;
    nocgroup)
      local missing=1 p
      for _ in $(seq 1 100); do
        missing=0
        for p in $(awk '$1 == "pid" && $3 != "launcher" {print $2}' "$d/pids"); do
          grep -qx "$p" "$d/tracked" 2>/dev/null || missing=1
        done
        [[ $missing == 0 ]] && break
        sleep 0.1
      done
      [[ $missing == 0 ]] || echo "nocgroup: the watchdog had not seen every process of the run after 10 s"
      kill -KILL "$launcher" ;;
    kill-stopping) kill -TERM "$launcher"; sleep 0.5; kill -KILL "$launcher" ;;
    stop-kill) kill -STOP "$launcher"; sleep 0.5; kill -KILL "$launcher" ;;
    watchdog)
      wd=$(pgrep -P "$launcher" -f "__vla-launch-watchdog" | head -1)
      [[ -n $wd ]] && kill -KILL "$wd" && echo "watchdog: SIGKILL to the watchdog $wd"
      for _ in $(seq 1 200); do # a new watchdog takes over
        pgrep -P "$launcher" -f "__vla-launch-watchdog" | grep -vqx "$wd" && break; sleep 0.05
      done
      kill -KILL "$launcher" ;;
  esac
  t0=$(date +%s%N)
  wait "$launcher"; code=$?
  if [[ -n $expect ]]; then
    echo "$name: the launcher exited with $code ($expect expected)"
    [[ $code == "$expect" ]] || FAILED=1
  fi
  report "$name" "$d/pids" "$t0"
  echo "  record's outcome: $(record_outcome "$d/logs")"
  grep -h "watchdog\|leftover" "$d"/logs/run-*.log 2>/dev/null | cut -c1-200 | sed 's/^/  log: /'
}

for p in ${PHASES:-normal sigterm sighup pty kill-early kill-ready kill-stopping stop-kill watchdog nocgroup}; do
  phase "$p"
done

echo "work dir: $WORK"
exit $FAILED
