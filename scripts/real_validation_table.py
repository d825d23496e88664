#!/usr/bin/env python3
"""Tabulate a real-code validation run (scripts/real-validate.sh output, e.g. docs/validation/real-v2.tar.xz
unpacked): per configuration, the budget model's own prediction (before any calibration the launcher had
learnt during the run), the NVML peaks (total - free, the figure the launcher compares) of the real code and
of the stand-in probe, and the errors. Usage: real_validation_table.py DIR [DIR ...]"""

import json
import os
import re
import sys

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
    res = None
    for line in (out + "\n" + err).replace("\r", "\n").split("\n"):
        i = line.find("VLA_PROBE_RESULT {")
        if i >= 0:
            res = json.loads(line[i + len("VLA_PROBE_RESULT "):])
    predicted = float(model.group(1)) if model else float(alone.group(1)) if alone else float(shown.group(1)) if shown else None
    return {"plan": plan.group(1) if plan else "?", "model": predicted, "res": res}


def pct(pred, meas):
    return f"{100 * (pred - meas) / meas:+.1f}%"


def main():
    rows = []
    for root in sys.argv[1:]:
        for name in sorted(os.listdir(root)):
            if not name.endswith("-real"):
                continue
            base = name[: -len("-real")]
            real, probe = run_info(os.path.join(root, name)), run_info(os.path.join(root, base + "-probe"))
            rows.append((base, real, probe))
    print("| run | configuration (1 GPU) | budget model | real code peak | model vs real | probe peak | model vs probe"
          " | real - probe | real static | real peak alloc | probe peak alloc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for base, real, probe in rows:
        r, p = real["res"], probe["res"]
        if not r or not p:
            print(f"| {base} | {real['plan']} | | {'no result' if not r else ''} | | {'no result' if not p else ''} | | | | | |")
            continue
        rv, pv, m = r["peak_nvml_used_bytes"] / GIB, p["peak_nvml_used_bytes"] / GIB, real["model"]
        print(f"| {base} | {real['plan']} | {m:.2f} | {rv:.2f} | {pct(m, rv)} | {pv:.2f} | {pct(m, pv)} | {rv - pv:+.2f}"
              f" | {r['static_bytes'] / GIB:.2f} | {r['peak_alloc_bytes'] / GIB:.2f} | {p['peak_alloc_bytes'] / GIB:.2f} |")
    print("\nGiB; peaks are NVML total - free of the run's GPU (peak_nvml_used_bytes), the figure vla-launch compares.")


if __name__ == "__main__":
    main()
