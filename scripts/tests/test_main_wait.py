"""Issue 24 item 3: the ranks that wait for rank 0's LoRA merge must not time out.

Two CPU processes (gloo) whose default process group times out after 2 s, as NCCL's 10 minutes
would at scale; rank 0 "merges" for 5 s. A barrier on the default group (what the addition did)
fails; MainWait outlives it. Needs torch (skipped without it)."""

from __future__ import annotations

import datetime
import os
import socket
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
mp = pytest.importorskip("torch.multiprocessing")

SLOW_MERGE_S = 5.0
PG_TIMEOUT_S = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, port: int, how: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    import finetune_fsdp

    wait = finetune_fsdp.MainWait(timeout_s=600, log_every_s=1)
    dist.barrier()  # both ranks here; the MainWait group is made before the slow part, as at a save
    if how == "main_wait":
        wait.wait("warming up")
    result = "ok"
    try:
        if rank == 0:
            time.sleep(SLOW_MERGE_S)  # the merge
        if how == "main_wait":
            wait.wait("merging LoRA into the base model")
        else:
            dist.barrier()
    except RuntimeError as e:
        result = f"error: {e}"[:200]
    Path(out, f"rank{rank}").write_text(result)


def _run(how: str, tmp_path: Path) -> dict[int, str]:
    mp.spawn(_rank, args=(_free_port(), how, str(tmp_path)), nprocs=2, join=False).join(timeout=120)
    return {r: (tmp_path / f"rank{r}").read_text() for r in (0, 1) if (tmp_path / f"rank{r}").exists()}


def test_default_group_barrier_times_out_under_a_slow_merge(tmp_path: Path) -> None:
    """The control: what the addition did before (a barrier under the group's timeout) fails."""
    got = _run("barrier", tmp_path)
    assert got.get(1, "").startswith("error"), got


def test_main_wait_outlives_a_slow_merge(tmp_path: Path) -> None:
    got = _run("main_wait", tmp_path)
    assert got == {0: "ok", 1: "ok"}
