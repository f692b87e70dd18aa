"""λ(t) schedules for the soft release: the weight of the penalty λ(t)·‖θ − Pθ‖² over a relaxed run.

Pure functions of the epoch (no state: a resumed run needs none). ``epoch`` is on the relaxed run's own clock,
0 = the switch from the CNN. ``lam`` is λ(0).

=====================  =====================  ===============================================================
spec string            SoftSchedule           λ(t)
=====================  =====================  ===============================================================
``"const"``            ``("const")``          λ
``"linear:E"``         ``("linear", at=E)``   λ·max(0, 1 − t/E): linear decay, 0 from epoch E on (E > 0)
``"exp:H"``            ``("exp", half_life)`` λ·2^(−t/H): exponential decay with half-life H epochs (H > 0);
                                              ``SoftSchedule.exp(rate=r)`` gives λ·e^(−r·t), H = ln 2 / r
``"step:E"``           ``("step", at=E)``     λ before epoch E, 0 from E on (E >= 0)
=====================  =====================  ===============================================================

λ = 0 (or ``"step:0"``) is the hard relaxation. A very large λ with ``"step:E"`` keeps the run on the
constrained subspace until E, then releases it at once: the hard switch at E is its limit. (With SGD the
penalty's curvature is 2λ, so a "very large" λ means lr·λ close to 1/2, not beyond 1: see
:mod:`archrelax.embed.penalty`; TrainConfig refuses lr·λ >= 1 + momentum.)

What a very large λ does to an eFCN, precisely (SGD without momentum, lr·λ = 1/2, toward "cnn"; the trainer
adds the penalty's gradient before the step, so each update is θ' = Pθ − lr·g): the run stays on the CNN
subspace up to one step's off-subspace excursion (its ``cnn_distance`` stays at the size of one step, while the
hard eFCN's grows), it computes a CNN's function (its projection's loss is its own), and its CNN part moves as
the CNN trained by SGD with each tap's step divided by its tie count — gradient descent on the embedded
parameters, projected. That preconditioning is not undone: a tied entry receives 1/ties of its tap's CNN
update, so the conv layers learn ~positions times slower than in the CNN continued from the same snapshot,
whose trajectory (and loss) it does not follow. ``tests/test_soft_train.py`` checks all three.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SoftSchedule", "soft_lambda", "SCHEDULES", "FORMS"]

SCHEDULES = ("const", "linear", "exp", "step")
FORMS = _FORMS = "'const', 'linear:E' (0 at epoch E), 'exp:H' (half-life H epochs), 'step:E' (0 from epoch E)"


@dataclass(frozen=True)
class SoftSchedule:
    """A λ schedule (plain data): ``kind`` in :data:`SCHEDULES`; ``at`` (linear, step: an epoch) or
    ``half_life`` (exp, in epochs). ``SoftSchedule.parse("exp:2")`` and ``.spec`` convert to and from strings."""

    kind: str
    at: float | None = None
    half_life: float | None = None

    def __post_init__(self) -> None:
        k = self.kind
        if k not in SCHEDULES:
            raise ValueError(f"soft schedule kind {k!r} is not valid; use one of {_FORMS}")
        need = {"const": (), "linear": ("at",), "step": ("at",), "exp": ("half_life",)}[k]
        for name in ("at", "half_life"):
            value = getattr(self, name)
            if name in need:
                if value is None or not isinstance(value, (int, float)) or isinstance(value, bool) \
                        or not math.isfinite(value):
                    raise ValueError(f"soft schedule {k!r} needs a finite {name}=, got {value!r}; valid: {_FORMS}")
                low_ok = value >= 0 if k == "step" else value > 0
                if not low_ok:
                    raise ValueError(f"soft schedule {k!r}: {name}={value!r} must be {'>= 0' if k == 'step' else '> 0'}")
            elif value is not None:
                raise ValueError(f"soft schedule {k!r} takes no {name}= (got {value!r}); valid: {_FORMS}")

    @classmethod
    def exp(cls, *, half_life: float | None = None, rate: float | None = None) -> "SoftSchedule":
        """Exponential decay given its half-life (epochs) or its rate r (λ·e^(−r·t), per epoch)."""
        if (half_life is None) == (rate is None):
            raise ValueError("SoftSchedule.exp: give exactly one of half_life= or rate=")
        if rate is not None:
            if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
                raise ValueError(f"SoftSchedule.exp: rate={rate!r} must be a finite number > 0")
            half_life = math.log(2) / rate
        return cls("exp", half_life=half_life)

    @classmethod
    def parse(cls, spec: "str | SoftSchedule") -> "SoftSchedule":
        """``"const"``, ``"linear:E"``, ``"exp:H"``, ``"step:E"`` (or a SoftSchedule, returned as is)."""
        if isinstance(spec, SoftSchedule):
            return spec
        if not isinstance(spec, str):
            raise ValueError(f"soft schedule {spec!r} is not a string; valid: {_FORMS}")
        kind, sep, arg = spec.strip().partition(":")
        if kind not in SCHEDULES:
            raise ValueError(f"soft schedule {spec!r} is not valid; use one of {_FORMS}")
        if kind == "const":
            if sep:
                raise ValueError(f"soft schedule {spec!r}: 'const' takes no argument; valid: {_FORMS}")
            return cls("const")
        if not sep:
            what = "a half-life in epochs" if kind == "exp" else "an epoch"
            raise ValueError(f"soft schedule {spec!r} needs {what}: '{kind}:N'; valid: {_FORMS}")
        try:
            value = float(arg)
        except ValueError:
            raise ValueError(f"soft schedule {spec!r}: {arg!r} is not a number; valid: {_FORMS}") from None
        return cls(kind, half_life=value) if kind == "exp" else cls(kind, at=value)

    @property
    def spec(self) -> str:
        """The string form (``SoftSchedule.parse(s.spec) == s``)."""
        if self.kind == "const":
            return "const"
        return f"{self.kind}:{self.half_life if self.kind == 'exp' else self.at:g}"

    def __call__(self, epoch: float, lam: float) -> float:
        """λ(epoch) for λ(0) = ``lam``."""
        if not (isinstance(epoch, (int, float)) and math.isfinite(epoch) and epoch >= 0):
            raise ValueError(f"soft schedule {self.spec!r}: epoch={epoch!r} must be a finite number >= 0 "
                             "(epochs of the relaxed run, 0 = the switch)")
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"soft schedule {self.spec!r}: lam={lam!r} must be a finite number >= 0")
        if self.kind == "const":
            return float(lam)
        if self.kind == "linear":
            return float(lam) * max(0.0, 1.0 - epoch / self.at)
        if self.kind == "step":
            return float(lam) if epoch < self.at else 0.0
        return float(lam) * 2.0 ** (-epoch / self.half_life)


def soft_lambda(schedule: "str | SoftSchedule", epoch: float, *, lam: float) -> float:
    """λ at ``epoch`` (relaxed run's clock, 0 = the switch) of ``schedule`` (a spec string or SoftSchedule),
    starting from ``lam``: e.g. ``soft_lambda("linear:10", 5, lam=1.0) == 0.5``."""
    return SoftSchedule.parse(schedule)(epoch, lam)
