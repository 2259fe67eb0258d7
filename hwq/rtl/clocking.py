"""The board's `sync` clock domain: the oscillator, or a PLL when the board file targets
another frequency. PLL dividers are searched here (the same rules icepll / ecppll apply),
so a board file only states the frequency it wants.

With a PLL the domain is held in reset until it locks (then released synchronously).
`BoardClock` drives the domain; the module above it defines it (`m.domains +=
clock.domain`), so that every user of `sync` -- the SoC beside the clock -- is below
the definition (Amaranth 0.6 drops domains propagating up from a submodule, RFC 59).
"""
from __future__ import annotations

from amaranth.hdl import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from hwq.errors import HwqError


def ice40_pll(f_in: float, f_out: float) -> tuple[float, dict]:
    """SB_PLL40 (SIMPLE feedback) dividers closest to f_out: (achieved Hz, parameters)."""
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f = f_vco / 2 ** divq
                if best is None or abs(f - f_out) < abs(best[0] - f_out):
                    filt = next(k for k, top in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 1e12), 1)
                                if f_pfd < top)
                    best = (f, {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": filt})
    if best is None:
        raise HwqError(f"no iCE40 PLL setting turns {f_in / 1e6:g} MHz into {f_out / 1e6:g} MHz")
    return best


def ecp5_pll(f_in: float, f_out: float) -> tuple[float, dict]:
    """EHXPLLL dividers (feedback from CLKOP) closest to f_out: (achieved Hz, parameters)."""
    best = None
    for clki in range(1, 129):
        f_pfd = f_in / clki
        if not 3.125e6 <= f_pfd <= 400e6:
            continue
        for clkfb in range(1, 129):
            f = f_pfd * clkfb
            for clkop in range(1, 129):
                if 400e6 <= f * clkop <= 800e6:
                    break
            else:
                continue
            if best is None or abs(f - f_out) < abs(best[0] - f_out):
                best = (f, {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop})
    if best is None:
        raise HwqError(f"no ECP5 PLL setting turns {f_in / 1e6:g} MHz into {f_out / 1e6:g} MHz")
    return best


class BoardClock(Elaboratable):
    """Drives domain `sync` at `f_target` from the platform's default clock. `f_sync`
    is what the PLL actually gives (or the oscillator's frequency, with no PLL).

    `domain` is the `sync` ClockDomain this drives, which the parent module defines
    (`m.domains += clock.domain`); None without a PLL, where the platform's own `sync`
    (with the iCE40's BRAM power-on reset) is right and the platform creates it."""

    def __init__(self, platform, f_target: float):
        self.f_in = platform.default_clk_frequency
        self.family = getattr(platform, "family", None)
        if abs(f_target - self.f_in) < 1:
            self.f_sync, self.params = self.f_in, None
        elif self.family == "iCE40":
            self.f_sync, self.params = ice40_pll(self.f_in, f_target)
        elif self.family == "ecp5":
            self.f_sync, self.params = ecp5_pll(self.f_in, f_target)
        else:
            raise HwqError(f"{type(platform).__name__}: hwq generates PLLs for iCE40 and ECP5 "
                           f"only; set the board's clock_mhz to the oscillator's "
                           f"{self.f_in / 1e6:g} MHz")
        self.domain = None if self.params is None else ClockDomain("sync")

    def elaborate(self, platform):
        m = Module()
        if self.domain is None:
            return m
        cd = self.domain            # defined by the parent; driven here
        locked = Signal()
        pll_clk = Signal(attrs={"keep": 1})
        m.d.comb += cd.clk.eq(pll_clk)
        p = self.params
        if self.family == "iCE40":
            # the PLL sits next to the clock pad and takes it straight from the pin
            pad = platform.request(platform.default_clk, dir="-")
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
                p_DIVR=p["DIVR"], p_DIVF=p["DIVF"], p_DIVQ=p["DIVQ"],
                p_FILTER_RANGE=p["FILTER_RANGE"],
                i_PACKAGEPIN=pad.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=pll_clk, o_LOCK=locked)
        else:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", platform.request(platform.default_clk,
                                                                             dir="-"))
            m.submodules.pll = Instance(
                "EHXPLLL", a_FREQUENCY_PIN_CLKI=f"{self.f_in / 1e6:g}",
                a_FREQUENCY_PIN_CLKOP=f"{self.f_sync / 1e6:g}",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_CLKI_DIV=p["CLKI_DIV"], p_CLKFB_DIV=p["CLKFB_DIV"], p_CLKOP_DIV=p["CLKOP_DIV"],
                p_CLKOP_CPHASE=p["CLKOP_DIV"] - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                i_CLKI=clk_buf.i, i_CLKFB=pll_clk, i_RST=0,
                i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1,
                i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=pll_clk, o_LOCK=locked)
        # on the PLL's output net by the name it keeps through synthesis (nextpnr ignores a
        # constraint on a name it does not find, and then places against the frequency it
        # derives from the PLL, which gave a slower placement)
        platform.add_clock_constraint(pll_clk, self.f_sync)
        m.submodules.rst = ResetSynchronizer(~locked, domain="sync")
        return m
