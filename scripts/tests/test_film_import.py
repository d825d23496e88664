"""Issue 24 item 3: a failed import of FiLM's block class is fatal, with the reason."""

from __future__ import annotations

import sys

import pytest


def test_film_import_failure_is_fatal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import finetune_fsdp

    # a checkout whose prismatic package does not import (None in sys.modules: ImportError)
    monkeypatch.setitem(sys.modules, "prismatic", None)
    monkeypatch.setitem(sys.modules, "prismatic.models", None)
    monkeypatch.setitem(sys.modules, "prismatic.models.film_vit_wrapper", None)
    with pytest.raises(SystemExit) as e:
        finetune_fsdp.film_block_class()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "FiLMedVisionTransformerBlock" in err and "VLA_FINETUNE_SCRIPT" in err
