"""VLA_PROBE_SDPA: the switch that bounds torch 2.2.0's unknown kernel choice (issue 24)."""

import pytest

from vlalaunch import sdpa


def test_unset_forces_nothing() -> None:
    seen: list[str] = []
    assert sdpa.force_from_env({}, seen.append) is None
    assert sdpa.force_from_env({sdpa.FORCE_ENV: " "}, seen.append) is None
    assert seen == []


def test_an_unknown_kernel_is_refused_naming_the_choices() -> None:
    with pytest.raises(SystemExit) as e:
        sdpa.force_from_env({sdpa.FORCE_ENV: "fast"}, print)
    assert "math" in str(e.value) and "efficient" in str(e.value) and "'fast'" in str(e.value)
