#!/usr/bin/env python3
"""Turns the output folder of scripts/gpu-validate.sh into markdown for docs/validation.md.

For every run: what the launcher planned (plan --json with the same flags), what each rank
measured (the probe trainer's `VLA_PROBE_RESULT {json}` lines), the error of the prediction
against the NVML peak (what nvidia-smi shows), the launcher's exit code and diagnosis line.
"""

import json
import pathlib
import sys

from vlalaunch.result import ProbeResult

GIB = 2**30


def read(path, default=""):
    try:
        return path.read_text(errors="replace")
    except OSError:
        return default


def results(run):
    text = "\n".join(read(run / name) for name in ("stdout", "stderr"))
    return sorted((r.to_dict() for r in ProbeResult.parse_log(text)), key=lambda r: r.get("rank", 0))


def launcher_lines(run):
    keep = []
    for line in read(run / "stderr").splitlines():
        if line.startswith("vla-launch:") or "diagnos" in line.lower() or "CUDA out of memory" in line:
            keep.append(line.strip())
    return keep


def main(outdir):
    outdir = pathlib.Path(outdir)
    print(
        "| run | GPUs | plan | predicted GiB | rank | measured nvml GiB | error | alloc GiB | reserved GiB | s/step | samples/s | exit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for run in sorted((outdir / "runs").glob("*")):
        if not run.is_dir():
            continue
        try:
            plan = json.loads(read(run / "plan.json", "{}") or "{}")
        except json.JSONDecodeError:
            plan = {}
        pred = plan.get("predicted_peak_bytes")
        label = "-"
        if plan.get("strategy"):
            label = (
                f"{plan['strategy'].upper()} b{plan['batch_size']} x{plan['nproc_per_node']} "
                f"a{plan['grad_accumulation_steps']} {'ckpt' if plan['gradient_checkpointing'] else 'no-ckpt'}"
                f"{'' if plan.get('feasible') else ' (infeasible)'}"
            )
        rc = read(run / "rc", "?").strip()
        rows = results(run)
        if not rows:
            print(
                f"| {run.name} | {read(run / 'visible').strip()} | {label} | "
                f"{pred / GIB if pred else float('nan'):.2f} | - | - | - | - | - | - | - | {rc} |"
            )
        for r in rows:
            nvml = r.get("peak_nvml_used_bytes")
            err = (nvml - pred) / pred * 100 if (nvml and pred) else float("nan")
            print(
                f"| {run.name} | {read(run / 'visible').strip()} | {label} | {pred / GIB if pred else float('nan'):.2f} "
                f"| {r.get('rank')} | {nvml / GIB if nvml else float('nan'):.2f} | {err:+.1f}% "
                f"| {r.get('peak_alloc_bytes', 0) / GIB:.2f} | {r.get('peak_reserved_bytes', 0) / GIB:.2f} "
                f"| {r.get('s_per_step', float('nan')):.2f} | {r.get('samples_per_s', float('nan')):.2f} | {rc} |"
            )
        lines = launcher_lines(run)
        if lines:
            notes.append(f"- `{run.name}`: " + " / ".join(f"`{line}`" for line in lines[-3:]))
    if notes:
        print("\nLauncher lines per run:\n")
        print("\n".join(notes))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vla-validate")
