#!/usr/bin/env python3
"""The calibration check of scripts/gpu-validate.sh (phase calib), as markdown.

For each held-out run (a batch size `calibrate` did not probe): the budget model's own
prediction (`model_peak_bytes` of `plan --json`), the calibrated one (`predicted_peak_bytes`),
and what the GPU held (the run record's NVML total - free peak, the quantity predicted). Then the
run record's observed peaks against nvidia-smi sampled every 100 ms during the same run:
`memory.used` against the record's used peak, and nvidia-smi's total - free against the
record's total - free peak.

    scripts/validation_calib.py OUTDIR
"""

import glob
import json
import pathlib
import sys

MIB = 2**20
GIB = 2**30


def pct(a, b):
    return f"{100.0 * (a / b - 1.0):+.1f}%"


def smi_peaks(path):
    used, held = 0, 0
    for line in path.read_text(errors="replace").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        try:
            u, total, free = (int(x) for x in parts[2:5])
        except ValueError:
            continue
        used, held = max(used, u * MIB), max(held, (total - free) * MIB)
    return used, held


def main(outdir):
    outdir = pathlib.Path(outdir)
    calib = outdir / "runs" / "calib"
    print("calibrate output:\n")
    print("```")
    print((calib / "calibrate.out").read_text(errors="replace").rstrip())
    print("```\n")
    print(
        "| held-out run | model GiB | calibrated GiB | observed GiB (NVML total - free) | model error | calibrated error | record used vs nvidia-smi used | record total-free vs nvidia-smi total-free |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in sorted((outdir / "runs").glob("heldout-*")):
        plan = json.loads((run / "plan.json").read_text() or "{}")
        records = sorted(glob.glob(str(run / "log" / "plan-*.json")))
        if not records or not plan.get("predicted_peak_bytes"):
            print(f"| {run.name} | no plan or record | | | | | | |")
            continue
        outcome = json.loads(pathlib.Path(records[-1]).read_text())["outcome"]
        model = plan.get("model_peak_bytes") or plan["predicted_peak_bytes"]
        corrected = plan["predicted_peak_bytes"]
        used = (outcome.get("observed_peak_used_bytes") or [None])[0]
        held = (outcome.get("observed_peak_total_minus_free_bytes") or [None])[0]
        smi_used, smi_held = smi_peaks(run / "nvidia-smi.csv")
        if not (used and held and smi_used):
            print(
                f"| {run.name} (exit {outcome.get('exit_code')}) | {model / GIB:.2f} | {corrected / GIB:.2f} | missing | | | | |"
            )
            continue
        print(
            f"| {run.name} (exit {outcome.get('exit_code')}) | {model / GIB:.2f} | {corrected / GIB:.2f} | {held / GIB:.2f} "
            f"| {pct(held, model)} | {pct(held, corrected)} "
            f"| {used / MIB:.0f} vs {smi_used / MIB:.0f} MiB ({pct(used, smi_used)}) "
            f"| {held / MIB:.0f} vs {smi_held / MIB:.0f} MiB ({pct(held, smi_held)}) |"
        )
    print(
        "\n(error = observed / predicted - 1; the correction in force: "
        + ", ".join(
            sorted(
                {
                    json.loads((r / "plan.json").read_text() or "{}").get("correction") or "none"
                    for r in (outdir / "runs").glob("heldout-*")
                }
            )
        )
        + ")"
    )


if __name__ == "__main__":
    main(sys.argv[1])
