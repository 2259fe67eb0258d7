"""A cycle-accurate model of the SDR SDRAM chip of hwq/arch/sdram.py that holds a
controller to the datasheet, and adapters that serve it to a controller in Amaranth's
simulator and in cocotb.

`SdramModel.edge` takes the pins as sampled at one rising clock edge and returns what the
chip drives on DQ until the next edge. Edges count from 0. A READ at edge k drives beat i
after edge k + CL - 1 + i (the controller samples it at edge k + CL + i); a WRITE at edge
k takes beat i from DQ at edge k + i, its bytes masked by DQM. CL and the burst length are
the ones the controller programs. Any broken rule raises `SdramViolation` at once, naming
the edge, the command, the bank and the rule with its required and actual cycle counts.

What is not modelled is a violation too: CKE low (power-down, self refresh), BURST
TERMINATE, auto precharge, interleaved bursts, single-location write bursts, read masks
(DQM on a read beat) and bursts that do not start at a column aligned to their length.
The refresh rule is stricter than the datasheet's 8192 per 64 ms: once the mode is
loaded, every AUTO REFRESH follows the last within `timing.refi` edges.

A DRAM word of `timing.word_bytes` lives at `timing.locate(word)`: beat i of its burst
holds its little-endian bytes 2i and 2i + 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.arch.sdram import ALL_BANKS_BIT, COMMAND_OF, SdramTiming, mode_field

# The controller's pins, as the adapters read them: dq_o / dq_oe are its DQ output and
# output enable, dq_i its DQ input, which the adapters drive.
PINS = ("cke", "cs_n", "ras_n", "cas_n", "we_n", "ba", "a", "dqm", "dq_o", "dq_oe")
AUTO_PRECHARGE_BIT = ALL_BANKS_BIT      # A10 of a READ or WRITE


class SdramViolation(Exception):
    """The controller broke a rule of the chip; the message says which, and at which edge."""


@dataclass
class _Bank:
    row: int | None = None          # the open row; None: idle (precharged)
    activated: int | None = None    # edge of its last ACTIVE
    precharged: int | None = None   # edge of the PRECHARGE that last closed it
    read: int | None = None         # edge of the open row's last READ
    written: int | None = None      # edge of the open row's last WRITE


class SdramModel:
    """One chip driven at `timing`'s clock; counts its commands in `refreshes`,
    `activates`, `reads`, `writes` and `precharges`; `cycle` is the next edge's index."""

    def __init__(self, timing: SdramTiming):
        self.timing = timing
        self.chip = chip = timing.chip
        # np.zeros takes its pages from the OS on first touch: untouched rows cost nothing
        self.mem = np.zeros((chip.banks, 1 << chip.row_bits, 1 << chip.col_bits), np.uint16)
        self.cycle = 0
        self.refreshes = self.activates = self.reads = self.writes = self.precharges = 0
        self.cas_latency: int | None = None     # the mode register's, once loaded
        self.burst: int | None = None
        self._stage = "precharge"       # -> "refresh" -> "ready" (the mode is loaded)
        self._init_refreshes = 0
        self._banks = [_Bank() for _ in range(chip.banks)]
        self._last_active: int | None = None
        self._last_refresh: int | None = None
        self._last_mode: int | None = None
        self._last_access: tuple[int, str] | None = None    # (edge, READ or WRITE)
        self._drive: dict[int, int] = {}    # edge -> the read beat driven after it
        self._take: dict[int, tuple[int, int, int, int]] = {}  # edge -> (bank, row, col, beat)
        self._out: int | None = None        # what the chip drives since the last edge

    # ---- the pins ----
    def edge(self, *, cs_n: int, ras_n: int, cas_n: int, we_n: int, ba: int, a: int,
             dq_oe: int, dq: int, cke: int = 1, dqm: int = 0) -> int | None:
        """One rising edge with the pins as sampled at it: the 16-bit value the chip
        drives on DQ until the next edge, or None when it does not drive."""
        e = self.cycle
        if not cke:
            self._fail(e, "CKE low (power-down and self refresh are not modelled)")
        name = "NOP" if cs_n else COMMAND_OF[(ras_n, cas_n, we_n)]
        if dq_oe and self._out is not None:
            self._fail(e, f"{name}: bus collision (the controller drives DQ in a cycle the "
                          "chip drives it)")
        self._check_refresh(e)
        if name != "NOP":
            self._command(e, name, ba, a)
        beat = self._take.pop(e, None)
        if beat is not None:
            self._store(e, beat, dq_oe, dq, dqm)
        # DQM masks read data two edges later: here, the beat driven after the next edge
        if dqm and e + 1 in self._drive:
            self._fail(e, f"DQM {dqm:#x} masks the read beat sampled at edge {e + 2} "
                          "(read masks are not modelled)")
        self._out = self._drive.pop(e, None)
        self.cycle = e + 1
        return self._out

    @property
    def quiet(self) -> bool:
        """No burst in flight: no read beat to drive, none driven now, no write beat to take."""
        return not self._drive and not self._take and self._out is None

    def advance(self, n: int) -> None:
        """`n` edges of NOP with DQ released; constant time once the chip is quiet."""
        while n and not self.quiet:
            self.edge(cs_n=1, ras_n=1, cas_n=1, we_n=1, ba=0, a=0, dq_oe=0, dq=0)
            n -= 1
        due = self.refresh_deadline
        if due is not None and due + 1 < self.cycle + n:
            self._check_refresh(due + 1)
        self.cycle += n

    @property
    def refresh_deadline(self) -> int | None:
        """The last edge the next AUTO REFRESH may come at; None before the mode is loaded
        (initialisation refreshes at its own pace)."""
        if self._stage != "ready" or self._last_refresh is None:
            return None
        return self._last_refresh + self.timing.refi

    def finish(self) -> None:
        """The run ends before the next edge: a refresh must not be overdue there."""
        self._check_refresh(self.cycle)

    # ---- commands ----
    def _command(self, e: int, name: str, ba: int, a: int) -> None:
        t = self.timing
        if e < t.power_up:
            self._fail(e, f"{name} during power-up (NOP only for the first {t.power_up} edges)")
        if self._stage == "precharge" and not (name == "PRECHARGE" and a >> ALL_BANKS_BIT & 1):
            self._fail(e, f"{name} before the initial PRECHARGE of every bank")
        what = self._label(name, ba, a)
        self._after(e, what, self._last_mode, t.mrd, "tMRD", "the LOAD_MODE")
        self._after(e, what, self._last_refresh, t.rfc, "tRFC", "the AUTO_REFRESH")
        getattr(self, "_" + name.lower())(e, ba, a)

    @staticmethod
    def _label(name: str, ba: int, a: int) -> str:
        """The command and the bank it addresses, for messages."""
        if name == "PRECHARGE":
            return "PRECHARGE every bank" if a >> ALL_BANKS_BIT & 1 else f"PRECHARGE bank {ba}"
        return f"{name} bank {ba}" if name in ("ACTIVE", "READ", "WRITE") else name

    def _active(self, e: int, ba: int, row: int) -> None:
        t, bank, what = self.timing, self._banks[ba], self._label("ACTIVE", ba, row)
        self._need_mode(e, what)
        if bank.row is not None:
            self._fail(e, f"{what} while its row {bank.row} is open")
        if row >> self.chip.row_bits:
            self._fail(e, f"{what}: row {row} beyond the {1 << self.chip.row_bits} rows")
        self._after(e, what, bank.precharged, t.rp, "tRP", "its PRECHARGE")
        self._after(e, what, bank.activated, t.rc, "tRC", "its last ACTIVE")
        self._after(e, what, self._last_active, t.rrd, "tRRD", "the last ACTIVE")
        bank.row, bank.activated, self._last_active = row, e, e
        self.activates += 1

    def _read(self, e: int, ba: int, a: int) -> None:
        bank, col = self._access(e, "READ", ba, a)
        for i in range(self.burst):
            self._drive[e + self.cas_latency - 1 + i] = int(self.mem[ba, bank.row, col + i])
        bank.read = e
        self.reads += 1

    def _write(self, e: int, ba: int, a: int) -> None:
        bank, col = self._access(e, "WRITE", ba, a)
        for i in range(self.burst):
            self._take[e + i] = (ba, bank.row, col + i, i)
        bank.written = e
        self.writes += 1

    def _access(self, e: int, name: str, ba: int, a: int) -> tuple[_Bank, int]:
        """Check a READ or WRITE; its bank and first column."""
        t, bank, what = self.timing, self._banks[ba], self._label(name, ba, a)
        self._need_mode(e, what)
        if bank.row is None:
            self._fail(e, f"{what} with no row open")
        if a >> AUTO_PRECHARGE_BIT & 1:
            self._fail(e, f"{what} with auto precharge (A10; not modelled)")
        col = a & ~(1 << AUTO_PRECHARGE_BIT)
        if col >> self.chip.col_bits:
            self._fail(e, f"{what}: column {col} beyond the {1 << self.chip.col_bits} columns")
        if col % self.burst:
            self._fail(e, f"{what}: column {col} not aligned to the burst of {self.burst}")
        self._after(e, what, bank.activated, t.rcd, "tRCD", "its ACTIVE")
        if self._last_access is not None:
            k, last = self._last_access
            self._after(e, what, k, self.burst, "burst", f"the {last} at edge {k}")
        self._last_access = (e, name)
        return bank, col

    def _precharge(self, e: int, ba: int, a: int) -> None:
        t, every = self.timing, a >> ALL_BANKS_BIT & 1
        for n in range(self.chip.banks) if every else (ba,):
            bank, what = self._banks[n], f"PRECHARGE bank {n}"
            if bank.row is None and self._stage != "precharge":
                continue                    # an idle bank: a NOP for it
            self._after(e, what, bank.activated, t.ras, "tRAS", "its ACTIVE")
            if bank.activated is not None and e - bank.activated > t.ras_max:
                self._fail(e, f"{what} {e - bank.activated} cycles after its ACTIVE "
                              f"(tRAS max {t.ras_max})")
            if bank.written is not None:
                self._after(e, what, bank.written + self.burst - 1, t.wr, "tWR",
                            "its WRITE's last beat")
            self._after(e, what, bank.read, self.burst, "burst", "its READ")
            bank.row = bank.read = bank.written = None
            bank.precharged = e
        if self._stage == "precharge":
            self._stage = "refresh"
        self.precharges += 1

    def _auto_refresh(self, e: int, ba: int, a: int) -> None:
        self._need_idle(e, "AUTO_REFRESH")
        self._after(e, "AUTO_REFRESH", self._last_refresh, self.timing.rc, "tRC",
                    "the last AUTO_REFRESH")
        if self._stage == "refresh":
            self._init_refreshes += 1
        self._last_refresh = e
        self.refreshes += 1

    def _load_mode(self, e: int, ba: int, a: int) -> None:
        chip, t, what = self.chip, self.timing, "LOAD_MODE"
        if self._stage == "refresh" and self._init_refreshes < chip.init_refreshes:
            self._fail(e, f"{what} after {self._init_refreshes} of the initialisation's "
                          f"{chip.init_refreshes} AUTO_REFRESHes")
        self._need_idle(e, what)
        if self._drive or self._take:
            self._fail(e, f"{what} with a burst in flight")
        code, cl = mode_field(a, "burst_code"), mode_field(a, "cas_latency")
        if code > 3:
            self._fail(e, f"{what}: burst length code {code} (1, 2, 4, 8 only)")
        if mode_field(a, "interleaved"):
            self._fail(e, f"{what}: interleaved bursts (not modelled)")
        if cl not in (2, 3):
            self._fail(e, f"{what}: CAS latency {cl} (2 or 3 only)")
        if mode_field(a, "rest") or ba:
            self._fail(e, f"{what}: A12:A7 {mode_field(a, 'rest'):#x}, BA {ba} (reserved, "
                          "test mode or single-location write bursts; 0 only)")
        if cl == 2 and t.period_ns < chip.t_ck_cl2:
            self._fail(e, f"{what}: CAS latency 2 at a {t.period_ns:.3g} ns clock "
                          f"({chip.t_ck_cl2} ns at least)")
        self.burst, self.cas_latency = 1 << code, cl
        self._stage, self._last_mode = "ready", e

    def _burst_terminate(self, e: int, ba: int, a: int) -> None:
        self._fail(e, "BURST_TERMINATE (not modelled)")

    # ---- the checks ----
    def _fail(self, e: int, what: str):
        raise SdramViolation(f"edge {e}: {what}")

    def _after(self, e: int, what: str, since: int | None, need: int, rule: str,
               event: str) -> None:
        """`what` at edge e must come `need` cycles or more after `event` at `since`."""
        if since is not None and e - since < need:
            self._fail(e, f"{what} only {e - since} cycles after {event} ({rule} {need})")

    def _need_mode(self, e: int, what: str) -> None:
        if self._stage != "ready":
            self._fail(e, f"{what} before the mode register is loaded")

    def _need_idle(self, e: int, what: str) -> None:
        """Every bank precharged, tRP ago or more."""
        for n, bank in enumerate(self._banks):
            if bank.row is not None:
                self._fail(e, f"{what} while bank {n}'s row {bank.row} is open")
            self._after(e, what, bank.precharged, self.timing.rp, "tRP",
                        f"bank {n}'s PRECHARGE")

    def _check_refresh(self, e: int) -> None:
        due = self.refresh_deadline
        if due is not None and e > due:
            self._fail(e, f"refresh overdue: {e - self._last_refresh} cycles since the "
                          f"AUTO_REFRESH at edge {self._last_refresh} "
                          f"(tREFI {self.timing.refi})")

    def _store(self, e: int, beat: tuple[int, int, int, int], dq_oe: int, dq: int,
               dqm: int) -> None:
        bank, row, col, i = beat
        if not dq_oe:
            self._fail(e, f"WRITE bank {bank} row {row}: write beat {i} not driven "
                          "(DQ output enable low)")
        keep = (0x00FF if dqm & 1 else 0) | (0xFF00 if dqm & 2 else 0)
        self.mem[bank, row, col] = (int(self.mem[bank, row, col]) & keep) | (dq & ~keep & 0xFFFF)

    # ---- the back door: DRAM words, no timing ----
    def write_word(self, word: int, data: bytes) -> None:
        if len(data) != self.timing.word_bytes:
            raise ValueError(f"a DRAM word is {self.timing.word_bytes} bytes, not {len(data)}")
        self.load(data, word)

    def read_word(self, word: int) -> bytes:
        return self.dump(word, 1)

    def load(self, image: bytes, first_word: int = 0) -> None:
        """Whole words of `image` into DRAM words from `first_word` on."""
        if len(image) % self.timing.word_bytes:
            raise ValueError(f"{len(image)} bytes are no whole number of "
                             f"{self.timing.word_bytes}-byte DRAM words")
        beats = np.frombuffer(image, "<u2").reshape(-1, self.timing.burst)
        self.mem[self._cells(first_word, len(beats))] = beats

    def dump(self, first_word: int, n: int) -> bytes:
        """DRAM words first_word .. first_word + n - 1."""
        return self.mem[self._cells(first_word, n)].astype("<u2").tobytes()

    def _cells(self, first_word: int, n: int):
        """Index arrays into `mem` of n words' beats: words down, beats across."""
        if first_word < 0 or first_word + n > self.timing.words:
            raise ValueError(f"DRAM words {first_word}..{first_word + n - 1} beyond the "
                             f"{self.timing.words} the chip holds")
        bank, row, col = self.timing.locate(np.arange(first_word, first_word + n))
        return bank[:, None], row[:, None], col[:, None] + np.arange(self.timing.burst)


def _edge(model: SdramModel, values) -> int | None:
    """model.edge on the controller's pins, `values` in PINS order."""
    pins = dict(zip(PINS, values))
    pins["dq"] = pins.pop("dq_o")
    return model.edge(**pins)


async def serve_amaranth(ctx, pins, model: SdramModel) -> None:
    """Serve `model` to a controller in Amaranth's simulator, forever: at every rising
    edge of the sync domain (reset or not) the model takes `pins` as they were at that
    edge (`pins`: an object with the Signals named in PINS and `dq_i`), and `dq_i` is set
    right after it to what the chip drives (0 when it does not). A background testbench:

        sim.add_testbench(functools.partial(serve_amaranth, pins=dut.sdram, model=m),
                          background=True)

    `sim.run()` raises the model's SdramViolation, and returns once the critical
    testbenches are done (then call `m.finish()`)."""
    async for clk_hit, _, *values in ctx.tick().sample(*(getattr(pins, n) for n in PINS)):
        if clk_hit:
            out = _edge(model, values)
            ctx.set(pins.dq_i, 0 if out is None else out)


async def serve_cocotb(dut, model: SdramModel, prefix: str = "sdram__", clock=None) -> None:
    """Serve `model` to the controller in a cocotb simulation, forever, from the top's
    ports `<prefix>cs_n` etc. (PINS) to `<prefix>dq_i`. Start it before the first edge:

        cocotb.start_soon(serve_cocotb(dut, m))

    `clock`: the clock whose rising edges are the chip's (default `dut.clk`), or a
    trigger that fires once at each of them (such as `dut.tb_tick.value_change` where
    the clock is a pulse within one time step, which VPI need not report).

    It reads the pins after each edge's updates (in ReadWrite): the controller drives
    them from its registers, so what they show then is what the next edge samples.
    `dq_i` is written there too, and the controller's register takes it at the next
    edge. While the chip is quiet and the pins show NOP, it sleeps until a command pin
    changes (the pins change only at edges) or the edge at which a refresh is overdue,
    and then advances the model by the edges it slept through, counted from the
    simulation time and the clock period (measured between two edges). So `model.cycle`
    may lag behind the simulation, never past an overdue refresh: `model.finish()` at
    the end of a test holds.

    The task raises the model's SdramViolation, which fails the cocotb test."""
    from cocotb.simtime import get_sim_time
    from cocotb.triggers import First, ReadWrite, RisingEdge, Timer, Trigger

    ports = [getattr(dut, prefix + n) for n in PINS]
    dq_i = getattr(dut, prefix + "dq_i")
    command = ports[:5]                 # cke, cs_n, ras_n, cas_n, we_n
    tick = clock if isinstance(clock, Trigger) else RisingEdge(dut.clk if clock is None else clock)
    await ReadWrite()
    values = [int(p.value) for p in ports]
    last = period = None
    while True:
        if period and model.quiet and _idle(values):
            wake = [p.value_change for p in command]
            due = model.refresh_deadline
            if due is not None:         # last is edge model.cycle - 1's time
                wake.append(Timer((due + 2 - model.cycle) * period, "step"))
            await First(*wake)
            await ReadWrite()
            now = get_sim_time()
            model.advance(round((now - last) / period))
        else:
            await tick
            await ReadWrite()
            now = get_sim_time()
            if last is not None:
                period = now - last
            out = _edge(model, values)
            dq_i.value = 0 if out is None else out
        last = now
        values = [int(p.value) for p in ports]


def _idle(values) -> bool:
    """The pins (PINS order) show NOP or deselect with CKE high."""
    cke, cs_n, ras_n, cas_n, we_n = values[:5]
    return bool(cke) and (bool(cs_n) or (ras_n, cas_n, we_n) == (1, 1, 1))
