"""Update steps, drop-fraction decay and the GMP target (sparsity/schedules.py)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain import ConfigError
from sparsetrain.sparsity.schedules import UpdateSchedule, drop_fraction, gmp_sparsity, scale_steps


@pytest.mark.parametrize("step,expected", [
    (0, 0.3), (25, 0.15 * (1 + 2 ** -0.5)), (50, 0.15), (100, 0.0), (150, 0.0), (-5, 0.3),
])
def test_cosine_drop_fraction(step, expected):
    # f(t) = α/2·(1 + cos(π·t/T_end)), t clipped to [0, T_end]; α = 0.3, T_end = 100
    assert drop_fraction(step, 0.3, 100, "cosine") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step,expected", [(0, 0.3), (25, 0.225), (50, 0.15), (100, 0.0), (120, 0.0)])
def test_linear_drop_fraction(step, expected):
    assert drop_fraction(step, 0.3, 100, "linear") == pytest.approx(expected, abs=1e-12)


def test_constant_drop_fraction_and_unknown_decay():
    assert [drop_fraction(t, 0.1, 100, "constant") for t in (0, 50, 100, 500)] == [0.1] * 4
    with pytest.raises(ConfigError, match="choose one of: cosine, constant, linear"):
        drop_fraction(0, 0.3, 100, "exp")


def test_update_schedule_defaults():
    s = UpdateSchedule.build(total_steps=1000, delta_t=100)
    # start defaults to ΔT (no update before any training), end to 0.75·T
    assert (s.delta_t, s.start, s.end) == (100, 100, 750)
    updates = [t for t in range(1000) if s.is_update(t)]
    assert updates == [100, 200, 300, 400, 500, 600, 700]


def test_update_schedule_explicit_start_and_end():
    s = UpdateSchedule.build(total_steps=20, delta_t=3, start=2, end=14)
    # first update at start, then every ΔT; none at or after end (14 would be 2 + 4·3)
    assert [t for t in range(30) if s.is_update(t)] == [2, 5, 8, 11]
    s = UpdateSchedule.build(total_steps=20, delta_t=5, start=0, end=20)
    assert [t for t in range(30) if s.is_update(t)] == [0, 5, 10, 15]


@pytest.mark.parametrize("kwargs,match", [
    ({"total_steps": 100, "delta_t": 0}, "delta_t"),
    ({"total_steps": 100, "delta_t": -3}, "delta_t"),
    ({"total_steps": 100, "end": 101}, r"T_end \(101\) is beyond total_steps \(100\)"),
    ({"total_steps": 0}, "total_steps must be a positive integer"),
    ({"total_steps": None}, "total_steps must be a positive integer"),
    ({"total_steps": 100, "end_fraction": 1.5}, r"end_fraction must be in \(0, 1\]"),
    ({"total_steps": 100, "start": -1}, "start step must be >= 0"),
])
def test_update_schedule_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        UpdateSchedule.build(**kwargs)


@settings(max_examples=40, deadline=None)
@given(total=st.integers(1, 500), delta=st.integers(1, 60), frac=st.floats(0.01, 1.0))
def test_updates_are_spaced_by_delta_and_stop_before_end(total, delta, frac):
    s = UpdateSchedule.build(total, delta, end_fraction=frac)
    steps = [t for t in range(total + 2 * delta) if s.is_update(t)]
    assert all(s.start <= t < s.end for t in steps)
    assert all(b - a == delta for a, b in zip(steps, steps[1:]))
    if steps:
        assert steps[0] == delta and steps[-1] + delta >= s.end


@pytest.mark.parametrize("step,expected", [
    (0, 0.0), (10, 0.0),  # before/at t0: s_i
    (35, 0.9 - 0.9 * 0.75 ** 3),  # progress 0.25 → 0.9 + (0 − 0.9)·0.75³ = 0.5203125
    (60, 0.9 - 0.9 * 0.5 ** 3),  # progress 0.5 → 0.7875
    (110, 0.9), (200, 0.9),
])
def test_gmp_cubic(step, expected):
    assert gmp_sparsity(step, 0.9, begin=10, end=110) == pytest.approx(expected, abs=1e-12)


def test_gmp_from_nonzero_initial_and_scale_steps():
    # s_i = 0.5, s_f = 0.9, halfway: 0.9 + (0.5 − 0.9)·0.125 = 0.85
    assert gmp_sparsity(50, 0.9, begin=0, end=100, initial=0.5) == pytest.approx(0.85)
    assert scale_steps(750, 2.0) == 1500 and scale_steps(None, 5.0) is None
    assert scale_steps(101, 1.5) == 152
