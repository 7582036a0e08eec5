"""The learning-rate schedules: warmup, WSD's stable phase and final linear decay, cosine, constant."""

from __future__ import annotations

import pytest

from nvfp4.train import LRSchedule


def test_wsd_warms_up_holds_then_decays_over_the_last_fifth():
    s = LRSchedule("wsd", peak=1.0, total_steps=100, warmup_steps=10, min_ratio=0.1, decay_fraction=0.2)
    lrs = [s(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lr < 1.0 for lr in lrs[:9])
    assert all(lr == 1.0 for lr in lrs[10:80])  # stable until the decay starts at 80%
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:], strict=False))  # strictly decreasing
    assert lrs[80] < 1.0 and lrs[99] == pytest.approx(0.1)


def test_cosine_reaches_the_floor_and_constant_stays():
    cos = LRSchedule("cosine", peak=2.0, total_steps=50, warmup_steps=5, min_ratio=0.0)
    assert cos(5) == pytest.approx(2.0) and cos(50) == pytest.approx(0.0)
    assert cos(27) == pytest.approx(1.0, abs=0.1)
    const = LRSchedule("constant", peak=3.0, total_steps=10, warmup_steps=0)
    assert [const(i) for i in range(10)] == [3.0] * 10


def test_invalid_schedules():
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule("step", 1.0, 10, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        LRSchedule("wsd", 1.0, 10, 11)
