"""The probes' shared loop core, the instruction draws and the SDPA kernel names (no torch)."""

from __future__ import annotations

import random

import pytest

from vlalaunch import instructions, loop, sdpa


class Counter:
    def __init__(self) -> None:
        self.steps = 0
        self.zeroed = 0
        self.updates = 0
        self.closed = False

    def step(self) -> None:
        self.steps += 1

    def zero_grad(self) -> None:
        self.zeroed += 1

    def update(self) -> None:
        self.updates += 1

    def close(self) -> None:
        self.closed = True


def test_steps_every_accumulation_and_records_milestone_peaks() -> None:
    opt, sched, prog = Counter(), Counter(), Counter()
    losses = iter(range(1000))
    peaks = iter(range(1000))
    ran = loop.run(
        lambda: float(next(losses)),
        opt,
        sched,
        accumulation=3,
        max_steps=20,
        sync=lambda: None,
        progress=prog,
        memory=lambda: (next(peaks), -1),
        profile_sdpa=False,
    )
    assert ran.micro_batches == 60 and opt.steps == 20 and sched.steps == 20 and prog.updates == 20
    assert opt.zeroed == 21 and prog.closed
    assert ran.last_loss == 59.0  # the loss of the last micro-batch of the last step
    assert len(ran.step_times) == 20
    assert ran.peak_alloc_by_step == [0, 1, 2, 3, 4]  # steps 1, 2, 5, 10, 20


def test_milestones() -> None:
    assert [s for s in range(1, 1001) if loop.is_milestone(s)] == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def test_s_per_step_leaves_out_two_warm_up_steps() -> None:
    assert loop.LoopResult(step_times=[9.0, 5.0, 1.0, 3.0]).s_per_step == 2.0
    assert loop.LoopResult(step_times=[4.0, 2.0]).s_per_step == 3.0
    assert loop.LoopResult().s_per_step is None


class NumpyLike:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def integers(self, low: int, high: int) -> int:
        return self.r.randrange(low, high)


@pytest.mark.parametrize("platform", ["ALOHA", "LIBERO"])
def test_varied_instructions_give_padded_batches(platform: str) -> None:
    rng = NumpyLike(0)
    lengths = {instructions.word_tokens(instructions.draw(rng, platform, "varied")) for _ in range(200)}
    assert len(lengths) >= 3
    if platform == "LIBERO":
        assert max(lengths) - min(lengths) >= 10


def test_fixed_instruction_does_not_touch_the_generator() -> None:
    class Untouchable:
        def integers(self, low: int, high: int) -> int:
            raise AssertionError("drawn")

    assert instructions.draw(Untouchable(), "ALOHA", "fixed") == instructions.FIXED


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="varied or fixed"):
        instructions.check_mode("random")


def test_sdpa_kernel_names() -> None:
    events = [
        ("aten::scaled_dot_product_attention", 80),
        ("aten::_scaled_dot_product_flash_attention", 48),
        ("aten::_scaled_dot_product_flash_attention_backward", 48),
        ("aten::_scaled_dot_product_efficient_attention", 32),
        ("aten::_scaled_dot_product_efficient_attention_backward", 32),
        ("aten::mm", 900),
    ]
    counts = sdpa.count(events)
    assert counts == {"flash": 48, "efficient": 32}
    assert sdpa.summary(counts) == "flash:48,efficient:32"
    assert sdpa.summary({"math": 2}) == "math"
    assert sdpa.summary({}) == "none seen"
    assert sdpa.classify("aten::_scaled_dot_product_attention_math") == "math"
    assert sdpa.classify("aten::_scaled_dot_product_cudnn_attention") == "cudnn"
