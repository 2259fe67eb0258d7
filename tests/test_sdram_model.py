"""The SDRAM chip model (hwq/sim/sdram.py): reads and writes at the datasheet's edges, and
every rule it holds a controller to flagged at one cycle too few and not at the legal
spacing."""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.arch.sdram import ALL_BANKS_BIT, COMMANDS, MT48LC16M16A2, SdramTiming
from hwq.sim.sdram import SdramModel, SdramViolation, serve_amaranth

EVERY_BANK = 1 << ALL_BANKS_BIT


def timing(mhz: float = 100, word_bytes: int = 8, **chip) -> SdramTiming:
    """The ULX3S's chip with a short power-up (`chip` overrides its datasheet figures)."""
    return SdramTiming(replace(MT48LC16M16A2, power_up_us=0.1, **chip), mhz, word_bytes)


class Drive:
    """A controller made of command names: drives the model edge by edge, the write data
    with its WRITEs, and keeps what the chip drove after each edge."""

    def __init__(self, t: SdramTiming):
        self.m = SdramModel(t)
        self.t = t
        self.out: dict[int, int | None] = {}
        self.beats: dict[int, tuple[int, int]] = {}    # edge -> (dq, dqm) to drive

    def do(self, name: str = "NOP", ba: int = 0, a: int = 0, **pins) -> int:
        """`name` at the next edge; its index."""
        e = self.m.cycle
        ras_n, cas_n, we_n = COMMANDS[name]
        dq, dqm = self.beats.pop(e, (None, 0))
        kw = dict(cs_n=0, ras_n=ras_n, cas_n=cas_n, we_n=we_n, ba=ba, a=a,
                  dq_oe=int(dq is not None), dq=dq or 0, dqm=dqm) | pins
        self.out[e] = self.m.edge(**kw)
        return e

    def nop(self, n: int) -> None:
        for _ in range(n):
            self.do()

    def wait(self, n: int) -> None:
        """The next command n edges after the last."""
        self.nop(n - 1)

    def write(self, ba: int, col: int, beats, dqm=None) -> int:
        """WRITE with `beats` (None: that beat not driven)."""
        e = self.m.cycle
        for i, v in enumerate(beats):
            if v is not None:
                self.beats[e + i] = (v, dqm[i] if dqm else 0)
        return self.do("WRITE", ba=ba, a=col)

    def returned(self, k: int) -> list[int | None]:
        """The beats of the READ at edge k, as the controller samples them."""
        cl, bl = self.m.cas_latency, self.m.burst
        return [self.out[k + cl - 1 + i] for i in range(bl)]


def power_up(d: Drive) -> None:
    """Power-up, PRECHARGE every bank, the AUTO_REFRESHes, each at the legal spacing."""
    t = d.t
    d.nop(t.power_up)
    d.do("PRECHARGE", a=EVERY_BANK)
    d.wait(t.rp)
    for _ in range(t.chip.init_refreshes):
        d.do("AUTO_REFRESH")
        d.wait(max(t.rfc, t.rc))


def init(d: Drive, mode: int | None = None) -> Drive:
    power_up(d)
    d.do("LOAD_MODE", a=d.t.mode if mode is None else mode)
    d.wait(d.t.mrd)
    return d


@pytest.mark.parametrize("mhz, cl", [(100, 2), (150, 3)])
def test_write_then_read_returns_the_beats_at_cas_latency(mhz, cl):
    d = init(Drive(timing(mhz)))
    t = d.t
    assert (t.cas_latency, t.burst) == (cl, 4)
    d.do("ACTIVE", ba=2, a=77)
    d.wait(t.rcd)
    d.write(2, 8, [0x1111, 0x2222, 0x3333, 0x4444])
    d.wait(t.burst)
    k = d.do("READ", ba=2, a=8)
    d.nop(cl + t.burst)
    assert d.returned(k) == [0x1111, 0x2222, 0x3333, 0x4444]
    assert d.out[k + cl - 2] is None and d.out[k + cl - 1 + t.burst] is None
    assert (d.m.activates, d.m.writes, d.m.reads, d.m.refreshes) == (1, 1, 1, 2)
    assert d.m.quiet
    d.m.finish()


def test_dqm_masks_write_bytes():
    d = init(Drive(timing()))
    d.do("ACTIVE", ba=0, a=0)
    d.wait(d.t.rcd)
    d.write(0, 0, [0xAAAA] * 4)
    d.wait(d.t.burst)
    d.write(0, 0, [0x1122, 0x3344, 0x5566, 0x7788], dqm=[0, 1, 2, 3])
    d.nop(d.t.burst)
    assert d.m.read_word(0) == bytes.fromhex("2211" "aa33" "66aa" "aaaa")


@pytest.mark.parametrize("word_bytes", [2, 4, 8, 16])
def test_a_read_burst_returns_the_back_door_word(word_bytes):
    d = init(Drive(timing(word_bytes=word_bytes)))
    word = 12345
    data = bytes(range(7, 7 + word_bytes))
    d.m.write_word(word, data)
    bank, row, col = d.t.locate(word)
    d.do("ACTIVE", ba=bank, a=row)
    d.wait(d.t.rcd)
    k = d.do("READ", ba=bank, a=col)
    d.nop(d.t.cas_latency + d.t.burst)
    assert b"".join(v.to_bytes(2, "little") for v in d.returned(k)) == data


def test_load_and_dump_are_whole_words():
    m = SdramModel(timing())
    image = bytes(range(256)) * 3
    m.load(image, first_word=1000)
    assert m.dump(1000, len(image) // 8) == image
    assert m.read_word(1001) == image[8:16]
    with pytest.raises(ValueError):
        m.load(b"\0" * 7)
    with pytest.raises(ValueError):
        m.dump(m.timing.words - 1, 2)


def test_violation_names_edge_command_bank_and_rule():
    d = init(Drive(timing()))
    d.do("ACTIVE", ba=1, a=5)
    d.wait(d.t.ras)
    pre = d.do("PRECHARGE", ba=1)
    with pytest.raises(SdramViolation) as e:
        d.do("ACTIVE", ba=1, a=5)
    assert str(e.value) == (f"edge {pre + 1}: ACTIVE bank 1 only 1 cycles after its "
                            f"PRECHARGE (tRP {d.t.rp})")


# ---- every rule: a minimal sequence that breaks it when `bad`, at the legal spacing
# when not; each case is (what its message holds, clock MHz, chip overrides, sequence) ----
CASES = {}


def case(fragment: str, mhz: float = 100, **chip):
    def register(sequence):
        CASES[sequence.__name__] = (fragment, mhz, chip, sequence)
        return sequence
    return register


@case("tRP")
def trp(d, bad):
    init(d)
    d.do("ACTIVE", ba=1, a=5)
    d.wait(d.t.ras)
    d.do("PRECHARGE", ba=1)
    d.wait(d.t.rp - bad)
    d.do("ACTIVE", ba=1, a=5)


@case("tRC", t_ras=30)                  # tRAS + tRP < tRC: tRC binds
def trc(d, bad):
    t = init(d).t
    assert t.ras + t.rp < t.rc
    d.do("ACTIVE", ba=1, a=5)
    d.wait(t.ras)
    d.do("PRECHARGE", ba=1)
    d.wait(t.rc - t.ras - bad)
    d.do("ACTIVE", ba=1, a=6)


@case("tRRD")
def trrd(d, bad):
    init(d)
    d.do("ACTIVE", ba=0, a=1)
    d.wait(d.t.rrd - bad)
    d.do("ACTIVE", ba=1, a=1)


@case("tRFC")
def trfc(d, bad):
    init(d)
    d.do("AUTO_REFRESH")
    d.wait(d.t.rfc - bad)
    d.do("ACTIVE", ba=0, a=1)


@case("tRCD")
def trcd(d, bad):
    init(d)
    d.do("ACTIVE", ba=3, a=9)
    d.wait(d.t.rcd - bad)
    d.do("READ", ba=3, a=0)


@case("tRAS")
def tras(d, bad):
    init(d)
    d.do("ACTIVE", ba=3, a=9)
    d.wait(d.t.ras - bad)
    d.do("PRECHARGE", a=EVERY_BANK)


@case("tWR")
def twr(d, bad):
    init(d)
    d.do("ACTIVE", ba=0, a=9)
    d.wait(d.t.rcd)
    d.write(0, 4, [1, 2, 3, 4])
    d.wait(d.t.burst - 1 + d.t.wr - bad)
    d.do("PRECHARGE", ba=0)


@case("after its READ")
def read_cut_by_precharge(d, bad):
    init(d)
    d.do("ACTIVE", ba=0, a=9)
    d.wait(d.t.rcd)
    d.do("READ", ba=0, a=4)
    d.wait(d.t.burst - bad)
    d.do("PRECHARGE", ba=0)


@case("after the READ at edge")
def burst_overlap(d, bad):
    init(d)
    d.do("ACTIVE", ba=0, a=9)
    d.wait(d.t.rcd)
    d.do("READ", ba=0, a=4)
    d.wait(d.t.burst - bad)
    d.do("READ", ba=0, a=8)


@case("bus collision")
def bus_collision(d, bad):
    init(d)
    d.do("ACTIVE", ba=0, a=9)
    d.wait(d.t.rcd)
    d.do("READ", ba=0, a=4)
    d.wait(d.t.cas_latency + d.t.burst - bad)
    d.write(0, 8, [1, 2, 3, 4])


@case("write beat 2 not driven")
def write_beat_not_driven(d, bad):
    init(d)
    d.do("ACTIVE", ba=0, a=9)
    d.wait(d.t.rcd)
    d.write(0, 4, [1, 2, None if bad else 3, 4])
    d.nop(d.t.burst)


@case("during power-up")
def command_during_power_up(d, bad):
    d.nop(d.t.power_up - bad)
    d.do("PRECHARGE", a=EVERY_BANK)


@case("before the mode register is loaded")
def access_before_mode(d, bad):
    power_up(d)
    if not bad:
        d.do("LOAD_MODE", a=d.t.mode)
        d.wait(d.t.mrd)
    d.do("ACTIVE", ba=0, a=1)


@case("tMRD")
def tmrd(d, bad):
    power_up(d)
    d.do("LOAD_MODE", a=d.t.mode)
    d.wait(d.t.mrd - bad)
    d.do("ACTIVE", ba=0, a=1)


@case("refresh overdue")
def refresh_overdue(d, bad):
    init(d)
    d.do("AUTO_REFRESH")
    d.wait(d.t.refi + bad)
    d.do("AUTO_REFRESH")


@case("CAS latency 2", mhz=150)
def cl2_too_fast(d, bad):
    assert d.t.cas_latency == 3
    init(d, mode=d.t.mode & ~0x70 | (2 if bad else 3) << 4)


@pytest.mark.parametrize("name", CASES)
def test_rule_flagged_only_at_short_spacing(name):
    fragment, mhz, chip, sequence = CASES[name]
    legal = Drive(timing(mhz, **chip))
    sequence(legal, False)
    legal.m.finish()
    with pytest.raises(SdramViolation, match=fragment):
        sequence(Drive(timing(mhz, **chip)), True)


def test_refresh_overdue_through_advance_and_finish():
    d = init(Drive(timing()))
    refi = d.t.refi
    r = d.do("AUTO_REFRESH")
    d.m.advance(refi - 1)
    assert d.do("AUTO_REFRESH") == r + refi          # the latest legal edge
    d.m.advance(refi)
    with pytest.raises(SdramViolation, match=f"edge {r + 2 * refi + 1}: refresh overdue"):
        d.m.finish()
    with pytest.raises(SdramViolation, match=f"edge {r + 2 * refi + 1}: refresh overdue"):
        d.m.advance(10**9)


@pytest.mark.parametrize("mode, fragment", [
    (0x24, "burst length code 4"), (0x2A, "interleaved"), (0x12, "CAS latency 1"),
    (0x222, "A12:A7"),
])
def test_unmodelled_modes_are_violations(mode, fragment):
    with pytest.raises(SdramViolation, match=fragment):
        init(Drive(timing()), mode=mode)


@pytest.mark.parametrize("step, fragment", [
    (lambda d: d.do("NOP", cke=0), "CKE low"),
    (lambda d: d.do("BURST_TERMINATE"), "BURST_TERMINATE"),
    (lambda d: d.do("READ", ba=0, a=EVERY_BANK | 4), "auto precharge"),
    (lambda d: d.do("READ", ba=0, a=2), "not aligned"),
    (lambda d: d.do("READ", ba=0, a=1 << 9), "column 512"),
    (lambda d: d.do("WRITE", ba=1, a=0), "no row open"),
    (lambda d: d.do("ACTIVE", ba=0, a=3), "row 9 is open"),
    (lambda d: d.do("AUTO_REFRESH"), "row 9 is open"),
    (lambda d: d.do("LOAD_MODE", a=d.t.mode), "row 9 is open"),
])
def test_unmodelled_or_illegal_commands_are_violations(step, fragment):
    d = init(Drive(timing()))
    d.do("ACTIVE", ba=0, a=9)
    d.wait(d.t.rcd)
    with pytest.raises(SdramViolation, match=fragment):
        step(d)


def test_dqm_on_a_read_beat_is_a_violation():
    d = init(Drive(timing()))
    d.do("ACTIVE", ba=0, a=9)
    d.wait(d.t.rcd)
    d.do("READ", ba=0, a=0)
    d.do()
    with pytest.raises(SdramViolation, match="DQM"):
        d.do(dqm=1)


def test_advance_runs_a_burst_out_then_skips():
    d = init(Drive(timing()))
    d.do("ACTIVE", ba=0, a=9)
    d.wait(d.t.rcd)
    k = d.do("READ", ba=0, a=0)
    assert not d.m.quiet
    d.m.advance(100)
    assert d.m.quiet and d.m.cycle == k + 101


@settings(max_examples=200, deadline=None)
@given(word_bytes=st.sampled_from([2, 4, 8, 16]), data=st.data())
def test_locate_is_a_bijection(word_bytes, data):
    t = timing(word_bytes=word_bytes)
    words = data.draw(st.lists(st.integers(0, t.words - 1), min_size=2, max_size=50,
                               unique=True))
    places = [t.locate(w) for w in words]
    assert len(set(places)) == len(words)
    chip = t.chip
    for bank, row, col in places:
        assert bank < chip.banks and row < 1 << chip.row_bits
        assert col % t.burst == 0 and col + t.burst <= 1 << chip.col_bits


@settings(max_examples=50, deadline=None)
@given(word_bytes=st.sampled_from([2, 4, 8, 16]), data=st.data())
def test_back_door_round_trips(word_bytes, data):
    m = SdramModel(timing(word_bytes=word_bytes))
    words = data.draw(st.lists(st.integers(0, m.timing.words - 1), min_size=1, max_size=8,
                               unique=True))
    contents = {w: data.draw(st.binary(min_size=word_bytes, max_size=word_bytes))
                for w in words}
    for w, b in contents.items():
        m.write_word(w, b)
    assert all(m.read_word(w) == b for w, b in contents.items())


def _amaranth_pins():
    from amaranth.hdl import Signal
    return SimpleNamespace(
        cke=Signal(init=1), cs_n=Signal(init=1), ras_n=Signal(init=1), cas_n=Signal(init=1),
        we_n=Signal(init=1), ba=Signal(2), a=Signal(13), dqm=Signal(2), dq_o=Signal(16),
        dq_oe=Signal(), dq_i=Signal(16))


def _simulate(model, controller):
    """Amaranth's simulator: a register that takes dq_i at every edge, the model served
    on `pins`, and the testbench `controller(ctx, pins, q)`."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator
    pins, q, m = _amaranth_pins(), Signal(16), Module()
    m.d.sync += q.eq(pins.dq_i)
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(partial(serve_amaranth, pins=pins, model=model), background=True)
    sim.add_testbench(partial(controller, pins=pins, q=q))
    sim.run()


async def _command(ctx, pins, name, ba=0, a=0):
    """`name` on the pins for the next edge, then NOP after it."""
    ras_n, cas_n, we_n = COMMANDS[name]
    for signal, value in ((pins.cs_n, 0), (pins.ras_n, ras_n), (pins.cas_n, cas_n),
                          (pins.we_n, we_n), (pins.ba, ba), (pins.a, a)):
        ctx.set(signal, value)
    await ctx.tick()
    ctx.set(pins.cs_n, 1)


def test_serve_amaranth_delivers_read_beats_to_the_controllers_register():
    t = timing()
    model = SdramModel(t)
    model.write_word(3, bytes.fromhex("0100020003000400"))
    bank, row, col = t.locate(3)
    got = []

    async def controller(ctx, pins, q):
        await ctx.tick().repeat(t.power_up)
        await _command(ctx, pins, "PRECHARGE", a=EVERY_BANK)
        await ctx.tick().repeat(t.rp - 1)
        for _ in range(2):
            await _command(ctx, pins, "AUTO_REFRESH")
            await ctx.tick().repeat(t.rfc - 1)
        await _command(ctx, pins, "LOAD_MODE", a=t.mode)
        await ctx.tick().repeat(t.mrd - 1)
        await _command(ctx, pins, "ACTIVE", ba=bank, a=row)
        await ctx.tick().repeat(t.rcd - 1)
        await _command(ctx, pins, "READ", ba=bank, a=col)     # edge k; now after it
        for _ in range(t.cas_latency + t.burst):              # after edges k+1 ...
            await ctx.tick()
            got.append(ctx.get(q))

    _simulate(model, controller)
    cl = t.cas_latency
    assert got[cl - 1:cl - 1 + t.burst] == [1, 2, 3, 4]       # q after edge k + CL + i
    assert got[cl - 2] == 0 and model.reads == 1


def test_serve_amaranth_raises_the_violation():
    async def controller(ctx, pins, q):
        await _command(ctx, pins, "ACTIVE")
        await ctx.tick().repeat(5)

    with pytest.raises(SdramViolation, match="edge 0: ACTIVE during power-up"):
        _simulate(SdramModel(timing()), controller)
