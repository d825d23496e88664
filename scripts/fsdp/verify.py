#!/usr/bin/env python3
"""Judge the outputs of cpu_check.sh (or gpu_check.sh): print one line per check, exit 1 if any
fails.   python verify.py OUT_DIR"""

import functools
import json
import sys
from pathlib import Path

OUT = Path(sys.argv[1])
# bf16 has an 8-bit significand: one unit in the last place is 2^-8..2^-7 relative. Losses of two
# runs whose gradients differ only in rounding stay within a few units over a few steps.
LOSS_REL_TOL = 0.02
results = []


def _gib(record, key):
    return f"{record[key] / 2**30:.2f}" if record.get(key) is not None else "-"


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}")


def ranks(name):
    d = OUT / name
    return [json.loads((d / f"rank{r}.json").read_text()) for r in (0, 1)] if (d / "rank1.json").is_file() else None


def rc(name):
    f = OUT / f"{name}.rc"
    return int(f.read_text()) if f.is_file() else None


def rel_diff(a, b):
    return max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)), default=0.0)


def grads(name, r):
    import torch

    f = OUT / f"grads-{name}-{r}.pt"
    return torch.load(f) if f.is_file() else None


def main() -> int:
    import torch

    for name in ("m-fsdp", "l-fsdp", "g-fsdp"):
        runs = ranks(name)
        if runs:
            impl, version = runs[0].get("fsdp_impl"), runs[0].get("torch")
            print(f"INFO  {name}: torch {version}, FSDP implementation {impl}")
            break

    # 0. --help, and every run finished (the negative controls excepted)
    if rc("help") is not None:
        text = (OUT / "help.txt").read_text()
        flags = ("--use_fsdp", "--gradient_checkpointing", "--vla_path", "--merge_lora_during_training")
        check(
            "finetune_fsdp.py --help exits 0 and lists upstream's flags and the two new ones",
            rc("help") == 0 and all(f in text for f in flags),
            f"exit code {rc('help')}",
        )
        print(f"      (upstream finetune.py --help: exit code {rc('help-upstream')})")
    for f in sorted(OUT.glob("*.rc")):
        if f.stem not in ("v-local", "help", "help-upstream"):
            check(f"{f.stem}: finished", rc(f.stem) == 0, f"exit code {rc(f.stem)}")

    # 1. gradients
    up0, up1 = grads("ddp-upstream", 0), grads("ddp-upstream", 1)
    if up0 is not None and up1 is not None:
        same = [
            (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
            for a, b in zip(up0, up1)
        ]
        n_head = 16  # L1 head: 3 LayerNorms + 4 Linears... counted below from the tail
        differing = [i for i, s in enumerate(same) if not s]
        check(
            "upstream DDP leaves the action head's gradients unsynchronised (rank 0 != rank 1 only there)",
            bool(differing) and all(i >= len(same) - n_head - 4 for i in differing),
            f"{len(differing)} of {len(same)} parameters differ between ranks, "
            f"indices {differing[:3]}..{differing[-1:]}",
        )

    def is_zero(g):
        return (g["norm"] == 0.0) if isinstance(g, dict) else not bool(g.abs().max().item())

    zero_for_none = {}

    def grad_diff(a, b, key=None):
        # FSDP1 (use_orig_params) gives a parameter of a unit that trained an all-zero gradient
        # where DDP leaves None (a module the forward never used); the same values, counted apart
        worst, mism = 0.0, 0
        for x, y in zip(a, b):
            if x is None and y is not None and is_zero(y):
                zero_for_none[key] = zero_for_none.get(key, 0) + 1
                continue
            if (x is None) != (y is None):
                mism += 1
                continue
            if x is None:
                continue
            if isinstance(x, dict):  # GPU: norms and a sample
                worst = max(
                    worst,
                    abs(x["norm"] - y["norm"]) / max(x["norm"], 1e-30),
                    (x["head"] - y["head"]).abs().max().item() / max(x["head"].abs().max().item(), 1e-30),
                )
            else:
                worst = max(worst, (x - y).abs().max().item() / max(x.abs().max().item(), 1e-30))
        return worst, mism

    spread = {}
    for r in (0, 1):
        a, b = grads("ddp", r), grads("ddp2", r)
        if a is not None and b is not None:
            spread[r] = grad_diff(a, b)[0]
            print(
                f"      DDP vs DDP (run-to-run) first-step gradients, rank {r}: "
                f"worst relative difference {spread[r]:.3g}"
            )
    for r in (0, 1) if any(OUT.glob("grads-fsdp-*.pt")) else ():
        a, b = grads("ddp", r), grads("fsdp", r)
        if a is None or b is None:
            check(f"gradient dumps rank {r}", False, "missing")
            continue
        worst, mism = grad_diff(a, b, r)
        n = sum(1 for x in a if x is not None)
        # tolerance: 1e-2, or twice DDP's own run-to-run spread where that was measured
        tol = max(1e-2, 2 * spread.get(r, 0.0))
        check(
            f"first-step reduced gradients, FSDP vs DDP (head synchronised), rank {r}",
            mism == 0 and len(a) == len(b) and worst <= tol,
            f"{n} parameters with gradients, worst relative max-abs difference {worst:.3g} (tolerance {tol:.3g}), "
            f"presence mismatches {mism}"
            + (f"; {zero_for_none[r]} all-zero where DDP has none (FSDP1)" if zero_for_none.get(r) else ""),
        )

    # 2. losses (the tolerance widens to twice DDP's own run-to-run spread where that was measured)
    loss_spread = {}
    d1, d2 = ranks("g-ddp"), ranks("g-ddp2")
    if d1 and d2:
        for r in (0, 1):
            loss_spread[r] = rel_diff(d1[r]["losses"], d2[r]["losses"])
            print(f"      DDP vs DDP (run-to-run) losses, rank {r}: worst relative difference {loss_spread[r]:.4f}")
    for pair in ("g", "m", "l", "r"):
        d, f = ranks(f"{pair}-ddp"), ranks(f"{pair}-fsdp")
        if d is None or f is None:
            continue
        for r in (0, 1):
            lt = rel_diff(d[r]["losses"], f[r]["losses"])
            n = min(len(d[r]["losses"]), len(f[r]["losses"]))
            # validation is cut by --val_time_limit, so its batch counts (and which batches
            # later passes see) depend on speed: counts only
            nv = (
                f"; validation batches DDP {len(d[r]['val_losses'])}, FSDP {len(f[r]['val_losses'])}"
                if d[r]["val_losses"] or f[r]["val_losses"]
                else ""
            )
            tol = max(LOSS_REL_TOL, 2 * loss_spread.get(r, 0.0)) if pair == "g" else LOSS_REL_TOL
            check(
                f"{pair}: training losses FSDP vs DDP, rank {r}",
                len(d[r]["losses"]) == len(f[r]["losses"]) and lt <= tol,
                f"{n} micro-batches, worst relative difference {lt:.4f} (tolerance {tol:.4f}){nv}",
            )
        for name, runs in ((f"{pair}-ddp", d), (f"{pair}-fsdp", f)):
            x = runs[0]
            if x.get("gradient_checkpointing") and "decoder_layer_calls" in x:
                want = x["decoder_layers"] * (2 * len(x["losses"]) + len(x["val_losses"]))
                check(
                    f"{name}: gradient checkpointing recomputes every Llama layer in backward",
                    x["decoder_layer_calls"] == want,
                    f"{x['decoder_layer_calls']} layer forwards, expected {want}",
                )

    # 3. checkpoints
    for name in ("compare-g", "compare-m", "compare-l"):
        f = OUT / f"{name}.json"
        if not f.is_file():
            continue
        c = json.loads(f.read_text())
        check(
            f"{name}: same files, keys, shapes and dtypes",
            c["files"]["names_equal"] and not c["files"]["structural_differences"],
            "; ".join(c["files"]["structural_differences"][:3]) or f"{len(c['files']['names_a'])} files",
        )
        worst = max((v["max_abs_diff"] for v in c["files"]["tensor_files"].values()), default=0.0)
        print(f"      largest |DDP - FSDP| of any saved value: {worst:.3g}")
        if "eval" in c:
            e = c["eval"]
            check(
                f"{name}: both load with openvla_utils (get_vla, get_action_head, get_proprio_projector) and agree",
                abs(e["loss_a"] - e["loss_b"]) / max(e["loss_a"], 1e-12) <= LOSS_REL_TOL,
                f"L1 loss {e['loss_a']:.5f} vs {e['loss_b']:.5f}; actions max |diff| {e['actions_max_abs_diff']:.3g} "
                f"(mean |action| {e['actions_mean_abs']:.3g})",
            )
            for m in ("ddp", "fsdp"):
                rr = ranks(f"r-{m}")
                if rr:
                    want = e["loss_a"] if m == "ddp" else e["loss_b"]
                    got = rr[0]["losses"][0]
                    check(
                        f"--resume from the {m.upper()} checkpoint: first loss = the saved model's loss (eval loader)",
                        abs(got - want) / max(want, 1e-12) <= LOSS_REL_TOL / 4,
                        f"{got:.5f} vs {want:.5f}",
                    )

    # merging LoRA: upstream (DDP) loads the base model on every rank, finetune_fsdp on rank 0 only
    for pair in ("m",):
        d, f = ranks(f"{pair}-ddp"), ranks(f"{pair}-fsdp")
        if d and f:
            loads = lambda runs: [sum(1 for e in x["events"] if "merge_base_built_s" in e) for x in runs]  # noqa: E731
            check(
                f"{pair}: merge_lora_during_training loads the base model on rank 0 only under FSDP",
                loads(f) == [1, 0] and loads(d) == [1, 1],
                f"base-model loads per rank: DDP {loads(d)}, FSDP {loads(f)}",
            )

    # 4. validation clock
    if rc("v-agreed") is not None:
        v = ranks("v-agreed")
        ok = rc("v-agreed") == 0 and v is not None and len(v[0]["val_losses"]) == len(v[1]["val_losses"])
        check(
            "FSDP validation with a slow rank: agreed clock, every rank stops on the same batch",
            ok,
            f"rc={rc('v-agreed')}, val batches {[len(x['val_losses']) for x in v] if v else None}",
        )
    if rc("v-local") is not None:
        runs = ranks("v-local")
        impl = runs[0].get("fsdp_impl") if runs else None
        vals = [len(x["val_losses"]) for x in runs] if runs else None
        if impl == "fsdp1" and rc("v-local") == 0 and vals and len(set(vals)) == 1:
            # FSDP1 all-gathers at the start of every unit's forward: the slow rank's sleep holds the
            # other rank in the next forward, so both clocks pass the limit on the same batch here
            print(
                f"INFO  negative control not reproduced under FSDP1: the ranks' own clocks agreed (val batches {vals})"
            )
        else:
            check(
                "negative control: each rank's own clock (upstream's) hangs FSDP validation",
                rc("v-local") == 124,
                f"rc={rc('v-local')} (124 = killed by timeout)",
            )

    # 5. figures (GPU runs): per rank, GiB
    rows = []
    for d in sorted(p for p in OUT.iterdir() if p.is_dir() and (p / "rank0.json").is_file()):
        for r in (0, 1):
            f = d / f"rank{r}.json"
            if not f.is_file():
                continue
            x = json.loads(f.read_text())
            if x.get("peak_alloc_bytes") is None:
                continue
            st = x["step_times"][2:] or x["step_times"]
            g = functools.partial(_gib, x)
            rows.append(
                f"| {d.name} | {r} | {'FSDP' if x['use_fsdp'] else 'DDP'} | {x['batch_size']} | "
                f"{x['gradient_checkpointing']} | {g('static_bytes')} | {g('peak_alloc_bytes')} | "
                f"{g('peak_reserved_bytes')} | {g('peak_nvml_used_bytes')} | "
                f"{sum(st) / len(st) if st else float('nan'):.3f} | "
                f"{(x['vram_cap_bytes'] or 0) // 2**20 or '-'} | {x['max_rss_kib'] / 2**20:.1f} |"
            )
    if rows:
        print(
            "\n| run | rank | mode | batch | ckpt | static | peak alloc | peak reserved | peak NVML | s/step | cap MiB "
            "| max RSS GiB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print("(GiB; s/step = mean optimizer-step time after the first two steps)")

    print(f"{sum(results)}/{len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
