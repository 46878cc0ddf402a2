"""Learning-rate schedules stepped per optimizer update: each curve against its formula (or
torch's own scheduler where cvtool follows it), warm-up as a ramp over updates, and a resumed
schedule continuing the curve exactly. No training: a one-parameter optimizer is enough."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from cvtool.engine.schedule import SCHEDULES, LrSchedule, Span

BASE = 0.1


def optimizer(lr: float = BASE, name: str = "sgd") -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(1))]
    return torch.optim.SGD(params, lr=lr, momentum=0.9) if name == "sgd" else torch.optim.Adam(params, lr=lr)


def cfg(name: str, **fields) -> SimpleNamespace:
    defaults = {"T_max": None, "eta_min": 0.0, "milestones": [], "step_size": 10, "gamma": 0.1, "factor": 0.1,
                "patience": 10, "mode": None, "max_lr": None, "pct_start": 0.3, "warmup_epochs": 0}
    return SimpleNamespace(name=name, **{**defaults, **fields})


def curve(schedule: LrSchedule, updates: int) -> list[float]:
    """The lr of each of `updates` optimizer updates, read before the update as the step uses it."""
    lrs = []
    for _ in range(updates):
        lrs.append(schedule.optimizer.param_groups[0]["lr"])
        schedule.optimizer.step()
        schedule.step()
    return lrs


def test_a_one_epoch_warmup_over_20_steps_ramps_over_those_20_updates() -> None:
    span = Span(epochs=3, steps=20, warmup_epochs=1)
    lrs = curve(LrSchedule(optimizer(), cfg("none"), span, "max"), 60)
    assert lrs[:20] == pytest.approx([BASE * (u + 1) / 21 for u in range(20)])
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21], strict=True))  # 20 distinct rising values, not a jump
    assert lrs[20:] == pytest.approx([BASE] * 40)


def test_cosine_ends_at_eta_min_on_the_last_update() -> None:
    span = Span(epochs=5, steps=7, warmup_epochs=1)
    lrs = curve(LrSchedule(optimizer(), cfg("cosine", eta_min=1e-4), span, "max"), span.total)
    main = lrs[7:]
    n = len(main)
    expected = [1e-4 + (BASE - 1e-4) * (1 + math.cos(math.pi * m / (n - 1))) / 2 for m in range(n)]
    assert main == pytest.approx(expected, rel=1e-12)
    assert main[0] == pytest.approx(BASE) and main[-1] == pytest.approx(1e-4)


def test_cosine_with_t_max_in_epochs() -> None:
    span = Span(epochs=4, steps=5)
    lrs = curve(LrSchedule(optimizer(), cfg("cosine", T_max=2), span, "max"), span.total)
    assert lrs[9] == pytest.approx(0.0, abs=1e-15)  # the end of 2 epochs of updates
    assert lrs[:10] == pytest.approx([BASE * (1 + math.cos(math.pi * u / 9)) / 2 for u in range(10)])


@pytest.mark.parametrize("name, fields, per_epoch", [
    ("step", {"step_size": 2, "gamma": 0.5}, lambda e: 0.5 ** (e // 2)),
    ("multistep", {"milestones": [1, 3], "gamma": 0.1}, lambda e: 0.1 ** sum(e >= m for m in (1, 3))),
    ("exponential", {"gamma": 0.9}, lambda e: 0.9**e),
    ("none", {}, lambda e: 1.0),
])
def test_epoch_wise_schedules_change_at_epoch_boundaries(name, fields, per_epoch) -> None:
    span = Span(epochs=5, steps=4, warmup_epochs=1)
    lrs = curve(LrSchedule(optimizer(), cfg(name, **fields), span, "max"), span.total)
    expected = [BASE * (u + 1) / 5 for u in range(4)]  # the warm-up epoch, then epochs counted from its end
    expected += [BASE * per_epoch(u // 4) for u in range(16)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_epoch_wise_schedules_equal_torchs_stepped_once_an_epoch() -> None:
    for name, fields, torch_cls, kwargs in [
        ("step", {"step_size": 2, "gamma": 0.5}, torch.optim.lr_scheduler.StepLR, {"step_size": 2, "gamma": 0.5}),
        ("multistep", {"milestones": [2, 3], "gamma": 0.1}, torch.optim.lr_scheduler.MultiStepLR,
         {"milestones": [2, 3], "gamma": 0.1}),
        ("exponential", {"gamma": 0.8}, torch.optim.lr_scheduler.ExponentialLR, {"gamma": 0.8}),
    ]:
        ours = curve(LrSchedule(optimizer(), cfg(name, **fields), Span(6, 3), "max"), 18)[::3]
        reference = torch_cls(optimizer(), **kwargs)
        theirs = []
        for _ in range(6):
            theirs.append(reference.get_last_lr()[0])
            reference.optimizer.step()
            reference.step()
        assert ours == pytest.approx(theirs, rel=1e-12), name


def test_onecycle_is_torchs_onecycle_over_every_update() -> None:
    span = Span(epochs=3, steps=10)
    ours = LrSchedule(optimizer(), cfg("onecycle", max_lr=0.5, pct_start=0.25), span, "max")
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer(), max_lr=0.5, total_steps=30, pct_start=0.25)
    lrs = curve(ours, 30)
    expected = []
    for _ in range(30):
        expected.append(reference.optimizer.param_groups[0]["lr"])
        reference.optimizer.step()
        if len(expected) < 30:
            reference.step()
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert ours.optimizer.param_groups[0]["momentum"] == reference.optimizer.param_groups[0]["momentum"]


@pytest.mark.parametrize("mode, metrics", [
    ("max", [0.5, 0.6, 0.6, 0.6, 0.59, 0.61, 0.61, 0.61, 0.61, 0.7, 0.7, 0.7, 0.7]),
    ("min", [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, float("nan"), 0.8, 0.8, 0.8, 0.5]),
])
def test_plateau_reduces_like_torchs_reduce_lr_on_plateau(mode: str, metrics: list[float]) -> None:
    ours = LrSchedule(optimizer(), cfg("plateau", factor=0.5, patience=2, mode=mode), Span(len(metrics), 3), mode)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer(), mode=mode, factor=0.5, patience=2)
    for value in metrics:
        curve(ours, 3)
        ours.step_epoch(value)
        reference.step(value)
        assert ours.optimizer.param_groups[0]["lr"] == pytest.approx(reference.optimizer.param_groups[0]["lr"])


def test_plateau_waits_for_the_warmup_to_end() -> None:
    ours = LrSchedule(optimizer(), cfg("plateau", factor=0.5, patience=0), Span(4, 2, warmup_epochs=2), "max")
    for _ in range(2):
        curve(ours, 2)
        ours.step_epoch(0.1)  # no improvement possible yet: the warm-up epochs are not judged
    assert ours.optimizer.param_groups[0]["lr"] == pytest.approx(BASE)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_resumed_schedule_continues_the_curve_exactly(name: str) -> None:
    fields = {"milestones": [2]} if name == "multistep" else {}
    warmup = 0 if name == "onecycle" else 1
    span = Span(epochs=4, steps=6, warmup_epochs=warmup)
    whole = curve(LrSchedule(optimizer(), cfg(name, **fields), span, "max"), span.total)
    first = LrSchedule(optimizer(), cfg(name, **fields), span, "max")
    head = curve(first, 9)  # interrupted in the middle of epoch 2
    saved_optimizer, saved_schedule = first.optimizer.state_dict(), first.state_dict()
    again = optimizer()
    resumed = LrSchedule(again, cfg(name, **fields), span, "max")  # built as a resume builds it: fresh, then loaded
    again.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved_schedule)
    assert head + curve(resumed, span.total - 9) == whole


def test_every_schedule_name_has_a_description() -> None:
    assert set(SCHEDULES) == {"none", "cosine", "multistep", "step", "plateau", "exponential", "onecycle"}
