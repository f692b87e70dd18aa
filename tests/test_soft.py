"""λ(t) schedules of the soft release (archrelax.train.soft): values, string forms, validation."""
from __future__ import annotations

import math

import pytest

from archrelax.train.soft import SCHEDULES, SoftSchedule, soft_lambda


def test_values():
    assert [soft_lambda("const", t, lam=2.0) for t in (0, 3.5, 100)] == [2.0, 2.0, 2.0]
    assert [soft_lambda("linear:10", t, lam=2.0) for t in (0, 5, 10, 20)] == [2.0, 1.0, 0.0, 0.0]
    assert [soft_lambda("step:5", t, lam=2.0) for t in (0, 4.999, 5, 9)] == [2.0, 2.0, 0.0, 0.0]
    assert [soft_lambda("exp:2", t, lam=2.0) for t in (0, 2, 4)] == [2.0, 1.0, 0.5]
    rate = SoftSchedule.exp(rate=0.5)
    assert rate.kind == "exp" and rate(3.0, 1.0) == pytest.approx(math.exp(-1.5), rel=1e-12)
    assert soft_lambda("step:0", 0, lam=1e9) == 0.0  # the hard relaxation
    assert soft_lambda("const", 1, lam=0.0) == 0.0


@pytest.mark.parametrize("spec", ["const", "linear:10", "exp:2", "step:5", "step:0", "exp:0.25", "linear:1.5"])
def test_spec_round_trip(spec):
    s = SoftSchedule.parse(spec)
    assert SoftSchedule.parse(s.spec) == s and s.spec == spec and SoftSchedule.parse(s) is s
    assert s.kind in SCHEDULES


@pytest.mark.parametrize("bad, msg", [
    ("cosine", r"'cosine' is not valid.*'const', 'linear:E'"),
    ("linear", r"'linear' needs an epoch: 'linear:N'"),
    ("exp", r"'exp' needs a half-life in epochs"),
    ("linear:0", r"at=0.0 must be > 0"),
    ("exp:-1", r"half_life=-1.0 must be > 0"),
    ("step:-1", r"at=-1.0 must be >= 0"),
    ("step:soon", r"'soon' is not a number"),
    ("const:3", r"'const' takes no argument"),
    ("linear:inf", r"needs a finite at="),
])
def test_errors_name_valid_schedules(bad, msg):
    with pytest.raises(ValueError, match=msg):
        SoftSchedule.parse(bad)


def test_call_validation():
    with pytest.raises(ValueError, match=r"epoch=-1 must be a finite number >= 0"):
        soft_lambda("const", -1, lam=1.0)
    with pytest.raises(ValueError, match=r"lam=nan must be a finite number >= 0"):
        soft_lambda("const", 0, lam=float("nan"))
    with pytest.raises(ValueError, match="takes no half_life"):
        SoftSchedule("step", at=1, half_life=2)
    with pytest.raises(ValueError, match="exactly one of half_life= or rate="):
        SoftSchedule.exp()
