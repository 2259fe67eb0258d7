"""An SDR SDRAM controller: the DRAM port (hwq/rtl/ports.py, with `rvalid`) on one side,
the chip's pins on the other, the chip's facts from hwq/arch/sdram.py.

One request at a time: a request the port accepts waits in a register until its command
issues, and `ready` (a register) is low meanwhile. A word is one burst. Each bank keeps
its row open until a request for another row in it (or a refresh) closes it, so a stream
of words issues a READ or WRITE every `burst` cycles, the chip's whole bandwidth; a miss
costs PRECHARGE, ACTIVE and their waits. Every timing is a countdown from the command
that starts it, and a command issues only where every countdown that gates it is out;
refresh comes before any request once its interval is due.

Commands leave from registers: a command decided in cycle c is on the pins in cycle c + 1
and taken by the chip at the edge that ends it. The chip's read data is sampled into a
register at every edge, a word gathered from its beats, and handed to the port with
`rvalid`, in order.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwq.arch.sdram import ALL_BANKS_BIT, COMMANDS, SdramTiming
from hwq.rtl.ports import DramPort


class SdramPins(wiring.Signature):
    """The chip's pins as the controller drives them; `dq` split into what the
    controller drives (`dq_o`, while `dq_oe`) and what it reads (`dq_i`)."""

    def __init__(self, timing: SdramTiming):
        chip = timing.chip
        super().__init__({
            "cke": Out(1), "cs_n": Out(1, init=1), "ras_n": Out(1, init=1),
            "cas_n": Out(1, init=1), "we_n": Out(1, init=1),
            "ba": Out(chip.bank_bits), "a": Out(max(chip.row_bits, ALL_BANKS_BIT + 1)),
            "dqm": Out(chip.data_bits // 8), "dq_o": Out(chip.data_bits), "dq_oe": Out(1),
            "dq_i": In(chip.data_bits),
        })


class _Countdown:
    """Cycles before a command may issue: `start(m, n)` in the cycle a command issues
    lets the gated one issue n cycles later (`done` then); a start never shortens a wait
    already running."""

    def __init__(self, name: str, most: int):
        self.count = Signal(range(max(most, 1)), name=name)
        self.done = self.count == 0

    def tick(self, m):
        with m.If(~self.done):
            m.d.sync += self.count.eq(self.count - 1)

    def start(self, m, n: int):
        if n > 1:                       # a wait of one cycle is the next cycle: none
            with m.If(self.count < n):        # (this edge's tick takes the count to count - 1)
                m.d.sync += self.count.eq(n - 1)


class SdramController(wiring.Component):
    """`timing`: the chip at this clock with words of the port's width; `addr_bits`: the
    port's word address width (the words beyond the chip alias: the SoC checks the
    config's DRAM fits); `io_delay`: the cycles a board's I/O registers add to a read's
    round trip (hwq/rtl/board_top.py), none in simulation."""

    def __init__(self, timing: SdramTiming, addr_bits: int, io_delay: int = 0):
        self.timing, self.io_delay = timing, io_delay
        assert timing.rc <= timing.ras + timing.rp   # a bank's ACTIVEs are that far apart
        super().__init__({
            "port": In(DramPort(addr_bits, 8 * timing.word_bytes, rvalid=True)),
            "sdram": Out(SdramPins(timing)),
            "ready_for_use": Out(1),            # initialisation is over
        })

    def elaborate(self, platform):
        m = Module()
        t, chip, pins, port = self.timing, self.timing.chip, self.sdram, self.port
        BL, NB = t.burst, chip.banks
        CL = t.cas_latency + self.io_delay         # a READ's decision to its first beat, less 2
        wc, bb = t.word_cols_bits, chip.bank_bits

        # ---- the request waiting for its command ----
        pending = Signal()
        is_write = Signal()
        bank = Signal(bb)
        row = Signal(chip.row_bits)
        col = Signal(chip.col_bits)
        wdata = Signal(8 * t.word_bytes)
        m.d.comb += port.ready.eq(~pending & self.ready_for_use)
        # the request against its bank's open row, registered: `settled` once it is of
        # this request and this state (the compare through a 4-way row select was the
        # ECP5-85F's longest path); a stream of words keeps its READ every burst
        settled, bank_open, hit = Signal(), Signal(), Signal()
        m.d.sync += settled.eq(1)
        with m.If(port.ready & (port.re | port.we)):
            m.d.sync += [pending.eq(1), is_write.eq(port.we), wdata.eq(port.wdata), settled.eq(0),
                         col.eq(Cat(Const(0, BL.bit_length() - 1), port.addr[:wc])),
                         bank.eq(port.addr[wc:wc + bb]),
                         row.eq(port.addr[wc + bb:wc + bb + chip.row_bits])]

        # ---- the banks' open rows and the countdowns ----
        is_open = Signal(NB)
        open_row = [Signal(chip.row_bits, name=f"open_row{b}") for b in range(NB)]
        precharge_wait = [_Countdown(f"precharge_wait{b}", max(t.ras, BL - 1 + t.wr, BL))
                          for b in range(NB)]
        row_wait = _Countdown("row_wait", max(t.rp, t.rfc, t.rrd, t.mrd))  # ACTIVE, REFRESH, MODE
        access_wait = _Countdown("access_wait", max(t.rcd, BL))            # READ, WRITE
        # WRITE after READ: the bus turned round a cycle after the chip's last beat
        turnaround = t.cas_latency + BL + 1
        write_wait = _Countdown("write_wait", turnaround)
        for c in (*precharge_wait, row_wait, access_wait, write_wait):
            c.tick(m)

        opened = is_open.bit_select(bank, 1)
        m.d.sync += [bank_open.eq(opened),
                     hit.eq(opened & (Cat(*open_row).word_select(bank, chip.row_bits) == row))]

        # ---- commands: registered onto the pins ----
        m.d.comb += pins.cke.eq(1)
        m.d.sync += [pins.cs_n.eq(0), pins.ras_n.eq(1), pins.cas_n.eq(1), pins.we_n.eq(1)]

        def command(name, ba=0, a=0):
            ras_n, cas_n, we_n = COMMANDS[name]
            m.d.sync += [pins.ras_n.eq(ras_n), pins.cas_n.eq(cas_n), pins.we_n.eq(we_n),
                         pins.ba.eq(ba), pins.a.eq(a)]

        # ---- refresh: due every interval, less the longest a due refresh can wait ----
        slack = max(t.ras, BL - 1 + t.wr) + t.rp + t.rfc + 8
        refresh_timer = Signal(range(t.refi), init=t.refi - slack)
        refresh_due = Signal()
        with m.If(refresh_timer == 0):
            m.d.sync += refresh_due.eq(1)
        with m.Else():
            m.d.sync += refresh_timer.eq(refresh_timer - 1)

        def refresh():
            command("AUTO_REFRESH")
            row_wait.start(m, t.rfc)
            m.d.sync += [refresh_timer.eq(t.refi - slack), refresh_due.eq(0)]

        # ---- read data: `reading` bit j set j + 1 cycles after a READ's decision; the
        # chip takes it an edge later and drives beat i for the edge CAS latency + i after
        # that (and the board's I/O `io_delay` later), into `dq_in`, so `dq_in` holds beat
        # i while bit CL + 1 + i is set ----
        reading = Signal(CL + BL + 1)
        dq_in = Signal(chip.data_bits)
        word = Signal(8 * t.word_bytes)
        issue_read = Signal()
        m.d.sync += [reading.eq(Cat(issue_read, reading[:-1])), dq_in.eq(pins.dq_i),
                     port.rvalid.eq(reading[CL + BL])]
        with m.If(reading[CL + 1:CL + BL + 1].any()):
            m.d.sync += word.eq(Cat(word[chip.data_bits:], dq_in))
        m.d.comb += port.rdata.eq(word)      # whole the cycle after its last beat: `rvalid`

        # ---- write data: beat i on the pins for the WRITE's edge + i ----
        wbeats = Signal(8 * t.word_bytes)
        wleft = Signal(range(BL))
        m.d.sync += pins.dq_oe.eq(wleft != 0)
        with m.If(wleft != 0):
            m.d.sync += [pins.dq_o.eq(wbeats[:chip.data_bits]),
                         wbeats.eq(wbeats >> chip.data_bits), wleft.eq(wleft - 1)]

        power_up = Signal(range(t.power_up + 1), init=t.power_up)
        inits = Signal(range(chip.init_refreshes + 1))
        with m.FSM(name="sdram"):
            with m.State("POWER_UP"):
                m.d.sync += power_up.eq(power_up - 1)
                with m.If(power_up == 0):
                    command("PRECHARGE", a=1 << ALL_BANKS_BIT)
                    row_wait.start(m, t.rp)
                    m.next = "INIT_REFRESH"
            with m.State("INIT_REFRESH"):
                with m.If(row_wait.done):
                    refresh()
                    m.d.sync += inits.eq(inits + 1)
                    with m.If(inits == chip.init_refreshes - 1):
                        m.next = "MODE"
            with m.State("MODE"):
                with m.If(row_wait.done):
                    command("LOAD_MODE", a=t.mode)
                    row_wait.start(m, t.mrd)
                    access_wait.start(m, t.mrd)
                    m.d.sync += self.ready_for_use.eq(1)
                    m.next = "IDLE"
            with m.State("IDLE"):
                with m.If(refresh_due):
                    with m.If(Cat(*(c.done for c in precharge_wait)).all()):
                        command("PRECHARGE", a=1 << ALL_BANKS_BIT)
                        row_wait.start(m, t.rp)
                        m.d.sync += [is_open.eq(0), settled.eq(0)]
                        m.next = "REFRESH"
                with m.Elif(~settled):
                    pass                        # `hit` and `bank_open` are of the last cycle
                with m.Elif(pending & hit):
                    with m.If(access_wait.done & (~is_write | write_wait.done)):
                        m.d.sync += pending.eq(0)
                        access_wait.start(m, BL)
                        with m.If(is_write):
                            command("WRITE", ba=bank, a=col)
                            m.d.sync += [pins.dq_o.eq(wdata[:chip.data_bits]),
                                         pins.dq_oe.eq(1),
                                         wbeats.eq(wdata >> chip.data_bits), wleft.eq(BL - 1)]
                            for b in range(NB):
                                with m.If(bank == b):
                                    precharge_wait[b].start(m, BL - 1 + t.wr)
                        with m.Else():
                            command("READ", ba=bank, a=col)
                            m.d.comb += issue_read.eq(1)
                            write_wait.start(m, turnaround)
                            for b in range(NB):
                                with m.If(bank == b):
                                    precharge_wait[b].start(m, BL)
                with m.Elif(pending & bank_open):
                    for b in range(NB):
                        with m.If((bank == b) & precharge_wait[b].done):
                            command("PRECHARGE", ba=b)
                            row_wait.start(m, t.rp)
                            m.d.sync += [is_open[b].eq(0), settled.eq(0)]
                with m.Elif(pending):
                    with m.If(row_wait.done):
                        command("ACTIVE", ba=bank, a=row)
                        row_wait.start(m, t.rrd)
                        access_wait.start(m, t.rcd)
                        for b in range(NB):
                            with m.If(bank == b):
                                precharge_wait[b].start(m, t.ras)
                                m.d.sync += [is_open[b].eq(1), open_row[b].eq(row),
                                             settled.eq(0)]
            with m.State("REFRESH"):
                with m.If(row_wait.done):
                    refresh()
                    m.next = "IDLE"
        return m
