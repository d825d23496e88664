#!/usr/bin/env python3
"""Tabulate a real-code validation run (scripts/real-validate.sh output, e.g. docs/validation/real-v2.tar.xz
unpacked): per configuration, the budget model's own prediction (before any calibration the launcher had
learnt during the run), the NVML peaks (total - free, the figure the launcher compares) of the real code and
of the stand-in probe, and the errors. Usage: real_validation_table.py [--model BIN] DIR [DIR ...]

A configuration's runs may lie in different DIRs (e.g. the real code in one call, the probe in a later one):
for each side the last DIR holding `NAME-real` / `NAME-probe` wins. With `--model BIN` the budget-model
column is recomputed by that vla-launch (`plan --json --gpus 1xh200` with the run's own arguments and an
empty calibration store), so runs made by older builds are judged by today's model; a run whose
configuration differs from the plan BIN makes is marked."""

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

from vlalaunch.result import ProbeResult

GIB = 1 << 30


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def run_info(d):
    err, out = read(os.path.join(d, "stderr")), read(os.path.join(d, "stdout"))
    plan = re.search(r"Plan for profile '[^']+': (.*)", err)
    model = re.search(r"observed [0-9.]+ GiB for predicted ([0-9.]+) GiB", err)
    alone = re.search(r"the budget model alone: ([0-9.]+) GiB", err)
    shown = re.search(r"([0-9.]+) GiB predicted peak per GPU", err)
    found = ProbeResult.parse_log(out + "\n" + err)
    res = found[-1].to_dict() if found else None
    predicted = (
        float(model.group(1)) if model else float(alone.group(1)) if alone else float(shown.group(1)) if shown else None
    )
    return {"plan": plan.group(1) if plan else "?", "model": predicted, "res": res}


def pct(pred, meas):
    return f"{100 * (pred - meas) / meas:+.1f}%"


def model_now(binary, run_dir, profiles):
    """(predicted peak GiB, (batch, accumulation, checkpointing)) of today's model for the run's arguments."""
    args = shlex.split(read(os.path.join(run_dir, "args")))
    for i, a in enumerate(args):
        if a == "--profile":
            args[i + 1] = os.path.join(profiles, args[i + 1] + ".yaml")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, VLA_LAUNCH_CACHE_DIR=cache)
        out = subprocess.run(
            [binary, "plan", "--json", "--gpus", "1xh200", *args], env=env, capture_output=True, text=True, check=True
        ).stdout
    plan = json.loads(out)
    return plan["model_peak_bytes"] / GIB, (
        plan["batch_size"],
        plan["grad_accumulation_steps"],
        plan["gradient_checkpointing"],
    )


def main():
    argv = sys.argv[1:]
    binary = None
    if argv[:1] == ["--model"]:
        binary, argv = os.path.abspath(argv[1]), argv[2:]
    profiles = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "launch-profiles")
    found = {}
    for root in argv:
        for name in sorted(os.listdir(root)):
            for side in ("real", "probe"):
                if name.endswith("-" + side):
                    found.setdefault(name[: -len(side) - 1], {})[side] = os.path.join(root, name)
    rows = []
    for base in sorted(found):
        dirs = found[base]
        if "real" not in dirs:
            continue
        real = run_info(dirs["real"])
        probe = run_info(dirs["probe"]) if "probe" in dirs else {"plan": "?", "model": None, "res": None}
        if binary:
            model, cfg = model_now(binary, dirs["real"], profiles)
            for side in (real, probe):
                r = side["res"]
                if r and (r["batch_size"], r["grad_accumulation_steps"], r["gradient_checkpointing"]) != cfg:
                    side["plan"] += f" (today's plan: batch {cfg[0]} x {cfg[1]}, checkpointing {cfg[2]})"
            real["model"] = model
        rows.append((base, real, probe))
    print(
        "| run | configuration (1 GPU) | budget model | real code peak | model vs real | probe peak | model vs probe"
        " | real - probe | real static | real peak alloc | probe peak alloc |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for base, real, probe in rows:
        r, p = real["res"], probe["res"]
        if not r or not p:
            print(
                f"| {base} | {real['plan']} | | {'no result' if not r else ''} | | {'no result' if not p else ''} | | | | | |"
            )
            continue
        rv, pv, m = r["peak_nvml_used_bytes"] / GIB, p["peak_nvml_used_bytes"] / GIB, real["model"]
        print(
            f"| {base} | {real['plan']} | {m:.2f} | {rv:.2f} | {pct(m, rv)} | {pv:.2f} | {pct(m, pv)} | {rv - pv:+.2f}"
            f" | {r['static_bytes'] / GIB:.2f} | {r['peak_alloc_bytes'] / GIB:.2f} | {p['peak_alloc_bytes'] / GIB:.2f} |"
        )
    print("\nGiB; peaks are NVML total - free of the run's GPU (peak_nvml_used_bytes), the figure vla-launch compares.")


if __name__ == "__main__":
    main()
