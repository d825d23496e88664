"""vla-launch's Python side: what the probe trainers and the FSDP addition share.

- `result`: the `VLA_PROBE_RESULT {json}` line (one definition; written by both trainers, parsed by the
  report scripts; the launcher's own parser is src/app/supervised_run.rs::reported_peaks).
- `loop`: the training-loop core both trainers run.
- `torchcompat`: which FSDP implementation a torch version can run, and the imports that moved.
- `helpfmt`: draccus/argparse `--help` that survives a bare `%` in a field comment.
- `instructions`: instructions of varied lengths, as the real datasets have.
- `sdpa`: which scaled-dot-product-attention kernel torch ran.

Nothing here imports torch at module level: flag errors and `--help` come before torch loads.
"""
