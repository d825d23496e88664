"""Which FSDP the addition runs on which torch (issue 24: FSDP1 on upstream's pinned 2.2.0)."""

from __future__ import annotations

import sys
import types

import pytest

from vlalaunch import torchcompat


@pytest.mark.parametrize(
    ("version", "impl"),
    [
        ("2.2.0", "fsdp1"),
        ("2.2.0+cu121", "fsdp1"),
        ("2.3.1", "fsdp1"),
        ("2.4.1+cu124", "fsdp1"),  # has fully_shard, but an empty torch.distributed.tensor
        ("2.5.0a0+git1234", "fsdp2"),
        ("2.5.1", "fsdp2"),
        ("2.11.0+cu130", "fsdp2"),
        ("3.0", "fsdp2"),
    ],
)
def test_impl_by_version(version: str, impl: str) -> None:
    assert torchcompat.choose_fsdp(version).impl == impl


@pytest.mark.parametrize("version", ["2.1.2", "1.13.1", "not-a-version"])
def test_too_old_or_unreadable_is_refused_naming_version_and_fix(version: str) -> None:
    with pytest.raises(torchcompat.UnsupportedTorch) as e:
        torchcompat.choose_fsdp(version)
    assert version in str(e.value)
    assert "torch==2.2.0" in str(e.value)


def test_forced_implementation() -> None:
    assert torchcompat.choose_fsdp("2.11.0", "fsdp1").impl == "fsdp1"
    assert torchcompat.choose_fsdp("2.4.1", "fsdp2").impl == "fsdp2"
    with pytest.raises(torchcompat.UnsupportedTorch, match=r"2\.2\.0"):
        torchcompat.choose_fsdp("2.2.0", "fsdp2")
    with pytest.raises(torchcompat.UnsupportedTorch, match="fsdp3"):
        torchcompat.choose_fsdp("2.5.0", "fsdp3")


def fake_torch(monkeypatch: pytest.MonkeyPatch, version: str, tensor_exports_dtensor: bool) -> type:
    """A `torch` whose torch.distributed.tensor is empty as in 2.4.1 (or exports DTensor as 2.5)."""

    class DTensor:
        def __init__(self, full: str) -> None:
            self.full = full

        def full_tensor(self) -> FakeTensor:
            return FakeTensor(self.full)

    class FakeTensor:
        def __init__(self, value: str) -> None:
            self.value = value

        def detach(self) -> FakeTensor:
            return self

        def to(self, device: str, copy: bool = False) -> FakeTensor:
            return FakeTensor(f"{self.value}@{device}")

    torch = types.ModuleType("torch")
    torch.__version__ = version  # type: ignore[attr-defined]
    distributed = types.ModuleType("torch.distributed")
    tensor = types.ModuleType("torch.distributed.tensor")
    private = types.ModuleType("torch.distributed._tensor")
    private.DTensor = DTensor  # type: ignore[attr-defined]
    if tensor_exports_dtensor:
        tensor.DTensor = DTensor  # type: ignore[attr-defined]
    torch.distributed = distributed  # type: ignore[attr-defined]
    distributed.tensor = tensor  # type: ignore[attr-defined]
    distributed._tensor = private  # type: ignore[attr-defined]
    for name, mod in [
        ("torch", torch),
        ("torch.distributed", distributed),
        ("torch.distributed.tensor", tensor),
        ("torch.distributed._tensor", private),
    ]:
        monkeypatch.setitem(sys.modules, name, mod)
    return DTensor


@pytest.mark.parametrize("exports", [False, True])
def test_checkpoint_gather_finds_dtensor_on_torch_2_4_and_2_5(monkeypatch: pytest.MonkeyPatch, exports: bool) -> None:
    """Issue 24 item 2: the save imported DTensor from torch.distributed.tensor, empty in 2.4.1."""
    import finetune_fsdp

    DTensor = fake_torch(monkeypatch, "2.4.1" if not exports else "2.5.1", exports)
    out = finetune_fsdp._gather_dtensors({"w": DTensor("full-w")}, keep_on_this_rank=True)
    assert out["w"].value == "full-w@cpu"


def test_unsupported_torch_is_refused_before_any_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 24 item 1: torch 2.1 dies with exit 2 naming the version and the fix (not an
    ImportError after the 7B model has loaded)."""
    import finetune_fsdp

    fake_torch(monkeypatch, "2.1.2+cu118", True)
    monkeypatch.delenv(torchcompat.IMPL_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        finetune_fsdp.choose_impl(types.SimpleNamespace(use_fsdp=True))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "torch 2.1.2+cu118" in err and "torch==2.2.0" in err


def test_pinned_torch_runs_fsdp1(monkeypatch: pytest.MonkeyPatch) -> None:
    import finetune_fsdp

    fake_torch(monkeypatch, "2.2.0", True)
    monkeypatch.delenv(torchcompat.IMPL_ENV, raising=False)
    assert finetune_fsdp.choose_impl(types.SimpleNamespace(use_fsdp=True)) == "fsdp1"
