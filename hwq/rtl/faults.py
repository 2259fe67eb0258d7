"""Deliberately broken accelerators, for the tests that prove the differential checks
catch a bug (hwq/sim/rtl_sim.py builds them by name):

  post_round   POST's half_up rounding truncates

Each is a subclass of the production blocks that replaces one part, so the production
constructors take no fault argument.
"""
from __future__ import annotations

from amaranth.hdl import Const

from hwq.arch.config import HwConfig
from hwq.rtl.post import PostUnit, RequantLanes
from hwq.rtl.top import Accelerator


class _TruncatingLanes(RequantLanes):
    @staticmethod
    def round_up(rbit, sticky, odd, nonneg) -> dict:
        return {**RequantLanes.round_up(rbit, sticky, odd, nonneg), "half_up": Const(0)}


class _TruncatingPost(PostUnit):
    Lanes = _TruncatingLanes


class _PostRound(Accelerator):
    unit_classes = {**Accelerator.unit_classes, "POST": _TruncatingPost}


FAULTS = {"post_round": _PostRound}


def accelerator(cfg: HwConfig, fault: str | None = None) -> Accelerator:
    """The accelerator for `cfg`, or with `fault` (a name in FAULTS) its broken variant."""
    if fault is None:
        return Accelerator(cfg)
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    return FAULTS[fault](cfg)
