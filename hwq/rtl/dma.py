"""LOAD and STORE: the DMA engines between the DRAM port and the on-chip buffers.

A buffer entry is `entry_words` consecutive DRAM words (lanes in order, little endian),
so both engines move one bus word per cycle. All DRAM address arithmetic is modulo
`dram_words` (a power of two: plain truncation); buffer addresses are ISA-wide
(SRAM_ADDR_BITS) and the top truncates them to each buffer's depth.

LoadUnit timeline (cycle 0 = start): cycles 1..I issue one item each -- a DRAM word read
of an element inside the block, or a zero entry for a padding position, either one in a
cycle with `ready` high (the top lowers it while it fetches an instruction) -- and each item
is written into the buffer 1 + o cycles later (the read latency; o =
hwq.arch.timing.read_regs: 1 where the write is from registers), so cycle I + 1 + o writes
the last one and raises done. I = y_size * x_size * entry_words + padding entries.
With `dram_reads` > 1 a read's destination waits in a queue until `rvalid` brings its
data, and a padding entry in a register of its own until a cycle without read data
(none is issued while one waits so); done follows the last write. A memory that
answers in the next cycle keeps the timeline above.

StoreUnit timeline: cycle 1 reads obuf entry 0; cycles 2..n*E+1 write the words, each
element's last word overlapping the obuf read of the next element; done with the last
write. Both stall (hold) while the DRAM port is not ready.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.errors import HwqError
from hwq.rtl.decode import args_layout
from hwq.rtl.ports import DramPort, SramRead, SramWrite, dram_port, held_args, unit_members
from hwq.arch.timing import read_regs


def dram_addr_bits(cfg: HwConfig) -> int:
    if cfg.dram_words & (cfg.dram_words - 1):
        raise HwqError(f"hardware config '{cfg.name}': the RTL needs dram_words to be a power "
                       f"of two (got {cfg.dram_words}); DRAM addresses wrap by truncation")
    return max(1, ceil_log2(cfg.dram_words))


def load_lanes(cfg: HwConfig) -> int:
    """Lanes (bus words) of LOAD's buffer write port: an entry of its widest target."""
    return max(cfg.entry_words(t) for t in isa.LOAD_TARGETS)


class LoadUnit(wiring.Component):
    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        self.A = dram_addr_bits(cfg)
        self.B = 8 * cfg.bus_bytes
        self.E = {t: cfg.entry_words(t) for t in isa.LOAD_TARGETS}
        self.lanes = load_lanes(cfg)
        super().__init__({
            **unit_members(args_layout("LOAD")),
            "dram": Out(dram_port(cfg, self.A)),
            "wr": Out(SramWrite(isa.SRAM_ADDR_BITS, self.lanes * self.B, self.lanes)),
            "target": Out(2),          # the `buf` field of the LOAD running (LOAD_TARGETS)
        })

    def elaborate(self, platform):
        m = Module()
        a0, a = self.args, held_args(m, self, self.cfg)
        m.d.comb += self.target.eq(a.buf)
        # positions in the padded block, and its bounds (registered at the start: the sums
        # would otherwise run from the instruction into the counters' enables, the
        # iCE40's longest path)
        H = range(2 * 8 + (1 << len(a.y_size)))
        W = range(2 * 8 + (1 << len(a.x_size)))
        y, y_end, y_last = (Signal(H, name=n) for n in ("y", "y_end", "y_last"))
        x, x_end, x_last = (Signal(W, name=n) for n in ("x", "x_end", "x_last"))
        k = Signal(range(max(2, self.lanes)), name="k")
        row = Signal(self.A, name="row")
        elem = Signal(self.A, name="elem")
        ptr = Signal(isa.SRAM_ADDR_BITS, name="ptr")
        addr = Signal(self.A, name="addr")     # = elem + k, kept so no adder feeds the port
        m.d.comb += self.dram.addr.eq(addr)    # valid with `re` (the top's default address)
        k_last = Signal.like(k, name="k_last")
        with m.Switch(a.buf):
            for code, t in enumerate(isa.LOAD_TARGETS):
                with m.Case(code):
                    m.d.comb += k_last.eq(self.E[t] - 1)
        # whether y and x lie inside the block (not in its padding), registered with them:
        # compared each cycle, they ran on through the counters' enables (the ECP5-85F's
        # longest path)
        inside_y = Signal(name="inside_y")
        inside_x = Signal(name="inside_x")
        inside = Signal()
        m.d.comb += inside.eq(inside_y & inside_x)
        queued = self.cfg.dram_reads > 1
        every = (1 << self.lanes) - 1
        if queued:
            # write stage: the oldest read's data as `rvalid` brings it, else the padding
            # entry waiting in its register
            m.submodules.reads = reads = SyncFIFO(width=len(ptr) + len(k), depth=self.cfg.dram_reads)
            rvalid = self.dram.rvalid
            head_ptr, head_k = reads.r_data[:len(ptr)], reads.r_data[len(ptr):]
            p_valid, p_ptr = Signal(), Signal.like(ptr)
            m.d.comb += reads.r_en.eq(rvalid)
            m.d.sync += p_valid.eq(p_valid & rvalid)        # written unless read data comes
            en = Mux(rvalid, 1 << head_k, Mux(p_valid, every, 0))
            addr_w, pad, data = Mux(rvalid, head_ptr, p_ptr), ~rvalid, self.dram.rdata
            # every item written once this cycle's write is done
            drained = (((reads.r_level == 0) | ((reads.r_level == 1) & rvalid))
                       & ~(p_valid & rvalid))
        else:
            # write stage: the item issued last cycle
            s_valid, s_pad = Signal(), Signal()
            s_ptr = Signal(isa.SRAM_ADDR_BITS)
            s_k = Signal.like(k)
            m.d.sync += s_valid.eq(0)
            en = Mux(s_valid, Mux(s_pad, every, 1 << s_k), 0)
            addr_w, pad, data = s_ptr, s_pad, self.dram.rdata
        if read_regs(self.cfg):
            # the write a cycle later, from registers: the DRAM's block RAMs' read data
            # would otherwise run on into the buffers' block RAMs (the padding's zero is
            # chosen after the register, off the path from the DRAM)
            regs = (Signal.like(self.wr.en), Signal.like(addr_w), Signal.like(pad),
                    Signal.like(self.dram.rdata))
            m.d.sync += [r.eq(v) for r, v in zip(regs, (en, addr_w, pad, data))]
            en, addr_w, pad, data = regs
        word = Mux(pad, 0, data)
        m.d.comb += [self.wr.addr.eq(addr_w), self.wr.en.eq(en),
                     self.wr.data.eq(Cat([word] * self.lanes))]

        tail = "LAST" if read_regs(self.cfg) else "DRAIN"
        with m.FSM(name="load") as fsm:
            with m.State("IDLE"):
                # the counters and bounds start over in every idle cycle: the start, at
                # the end of the dispatch logic, stays out of their enables
                y_end0, x_end0 = a0.pad_top + a0.y_size, a0.pad_left + a0.x_size
                h0, w0 = y_end0 + a0.pad_bottom, x_end0 + a0.pad_right
                m.d.sync += [y.eq(0), x.eq(0), k.eq(0), row.eq(a0.dram), elem.eq(a0.dram),
                             addr.eq(a0.dram), ptr.eq(a0.sram), y_end.eq(y_end0),
                             x_end.eq(x_end0), y_last.eq(h0 - 1), x_last.eq(w0 - 1),
                             inside_y.eq((a0.pad_top == 0) & (y_end0 != 0)),
                             inside_x.eq((a0.pad_left == 0) & (x_end0 != 0))]
                with m.If(self.start):
                    # h0 or w0 is 0 where its (unsigned) summands all are: no adders
                    empty = (~Cat(a0.pad_top, a0.y_size, a0.pad_bottom).any()
                             | ~Cat(a0.pad_left, a0.x_size, a0.pad_right).any())
                    with m.If(empty):
                        m.next = tail
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                accepted = Signal()
                if queued:
                    # a read waits for room in the queue, a padding entry for its register
                    with m.If(inside):
                        m.d.comb += [self.dram.re.eq(reads.w_rdy),
                                     accepted.eq(self.dram.ready & reads.w_rdy)]
                    with m.Else():
                        m.d.comb += accepted.eq(self.dram.ready & ~(p_valid & rvalid))
                    m.d.comb += [reads.w_en.eq(accepted & inside), reads.w_data.eq(Cat(ptr, k))]
                    with m.If(accepted & ~inside):
                        m.d.sync += [p_valid.eq(1), p_ptr.eq(ptr)]
                else:
                    with m.If(inside):
                        m.d.comb += [self.dram.re.eq(1), accepted.eq(self.dram.ready)]
                    with m.Else():
                        # a padding entry waits for a granted cycle too: the instruction fetch
                        # has priority on the port, and the cycle model counts granted cycles
                        m.d.comb += accepted.eq(self.dram.ready)
                    m.d.sync += [s_valid.eq(accepted), s_pad.eq(~inside), s_ptr.eq(ptr), s_k.eq(k)]
                with m.If(accepted):
                    with m.If(inside & (k != k_last)):
                        m.d.sync += [k.eq(k + 1), addr.eq(addr + 1)]
                    with m.Else():
                        m.d.sync += [k.eq(0), ptr.eq(ptr + 1), addr.eq(elem)]
                        with m.If(x == x_last):
                            m.d.sync += [x.eq(0), y.eq(y + 1),
                                         inside_x.eq((a.pad_left == 0) & (x_end != 0)),
                                         inside_y.eq((y + 1 >= a.pad_top) & (y + 1 < y_end))]
                            with m.If(inside_y):
                                m.d.sync += [row.eq(row + a.y_stride), elem.eq(row + a.y_stride),
                                             addr.eq(row + a.y_stride)]
                            with m.Else():
                                m.d.sync += [elem.eq(row), addr.eq(row)]
                            with m.If(y == y_last):
                                m.next = tail
                        with m.Else():
                            m.d.sync += [x.eq(x + 1),
                                         inside_x.eq((x + 1 >= a.pad_left) & (x + 1 < x_end))]
                            with m.If(inside):
                                m.d.sync += [elem.eq(elem + a.x_stride),
                                             addr.eq(elem + a.x_stride)]
            if queued:
                if read_regs(self.cfg):
                    with m.State("LAST"):       # until the last item is in the write register
                        with m.If(drained):
                            m.next = "DRAIN"
                    with m.State("DRAIN"):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
                else:
                    with m.State("DRAIN"):      # until the last item is written
                        with m.If(drained):
                            m.d.comb += self.done.eq(1)
                            m.next = "IDLE"
            else:
                if read_regs(self.cfg):
                    with m.State("LAST"):       # the registered write of the last item
                        m.next = "DRAIN"
                with m.State("DRAIN"):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


class StoreUnit(wiring.Component):
    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        self.A = dram_addr_bits(cfg)
        self.B = 8 * cfg.bus_bytes
        self.E = cfg.entry_words("obuf")
        super().__init__({
            **unit_members(args_layout("STORE")),
            "dram": Out(dram_port(cfg, self.A)),
            "rd": Out(SramRead(isa.SRAM_ADDR_BITS, 8 * cfg.entry_bytes("obuf"))),
        })

    def elaborate(self, platform):
        m = Module()
        a0, a = self.args, held_args(m, self, self.cfg)
        y, x = Signal.like(a.y_size, name="y"), Signal.like(a.x_size, name="x")
        # the last y and x, registered at the start, and whether y and x are at them,
        # registered with y and x: `x == x_last` ran on through the obuf read's enable
        # into the block RAMs (the ECP5-85F's longest path) and into the counters (the
        # iCE40's)
        y_last, x_last = Signal.like(y, name="y_last"), Signal.like(x, name="x_last")
        y_at_last, x_at_last = Signal(name="y_at_last"), Signal(name="x_at_last")
        k = Signal(range(max(2, self.E)), name="k")
        row = Signal(self.A, name="row")
        elem = Signal(self.A, name="elem")
        ptr = Signal(isa.SRAM_ADDR_BITS, name="ptr")
        addr = Signal(self.A, name="addr")     # = elem + k, kept so no adder feeds the port
        m.d.comb += [self.rd.addr.eq(ptr), self.dram.addr.eq(addr)]   # valid with `we`
        with m.FSM(name="store") as fsm:
            with m.State("IDLE"):
                # the counters start over in every idle cycle (as LOAD's)
                m.d.sync += [y.eq(0), x.eq(0), k.eq(0), row.eq(a0.dram), elem.eq(a0.dram),
                             addr.eq(a0.dram), ptr.eq(a0.sram), y_last.eq(a0.y_size - 1),
                             x_last.eq(a0.x_size - 1), y_at_last.eq(a0.y_size == 1),
                             x_at_last.eq(a0.x_size == 1)]
                with m.If(self.start):
                    with m.If((a0.y_size == 0) | (a0.x_size == 0)):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "FIRST"
            with m.State("FIRST"):
                m.d.comb += self.rd.en.eq(1)
                m.d.sync += ptr.eq(ptr + 1)
                m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [self.dram.wdata.eq(self.rd.data.word_select(k, self.B))]
                with m.If(self.dram.ready):
                    with m.If(k != self.E - 1):
                        m.d.sync += [k.eq(k + 1), addr.eq(addr + 1)]
                    with m.Else():
                        m.d.sync += k.eq(0)
                        with m.If(x_at_last):
                            m.d.sync += [x.eq(0), x_at_last.eq(x_last == 0), y.eq(y + 1),
                                         y_at_last.eq(y + 1 == y_last),
                                         row.eq(row + a.y_stride), elem.eq(row + a.y_stride),
                                         addr.eq(row + a.y_stride)]
                        with m.Else():
                            m.d.sync += [x.eq(x + 1), x_at_last.eq(x + 1 == x_last),
                                         elem.eq(elem + a.x_stride), addr.eq(elem + a.x_stride)]
                        with m.If(x_at_last & y_at_last):
                            m.d.comb += self.done.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.d.comb += self.rd.en.eq(1)
                            m.d.sync += ptr.eq(ptr + 1)
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        # outside the FSM's process: the top selects the DRAM address by it, and a
        # 4-state simulator leaves an FSM's outputs unknown until its state first changes
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE")), self.dram.we.eq(fsm.ongoing("WRITE"))]
        return m


class DramArbiter(wiring.Component):
    """The one DRAM port (hwq/rtl/ports.py: DramPort), shared by the instruction fetch
    and LOAD, which read, and STORE, which writes (nothing else of their ports is looked
    at): the fetch first, then LOAD or STORE (never both: the hazards keep a STORE from
    overlapping a LOAD). LOAD and STORE see `ready` low while the fetch has the port.

    The address is STORE's while it writes (`we` is a state of its FSM), else LOAD's,
    not chosen by LOAD's request: that depends on its padding comparisons, which would
    otherwise run on into the RAM's address (the iCE40's longest path).

    With `reads` > 1 reads in flight, which of the two readers made each read is queued
    (as many as `reads`; reads wait while the queue is full), so that `rvalid` reaches
    the one the data is for."""

    def __init__(self, addr_bits: int, data_bits: int, reads: int = 1):
        self.reads = reads
        port = DramPort(addr_bits, data_bits, rvalid=reads > 1)
        super().__init__({"fetch": In(port), "load": In(port), "store": In(port),
                          "mem": Out(port)})

    def elaborate(self, platform):
        m = Module()
        fetch, load, store, mem = self.fetch, self.load, self.store, self.mem
        with m.If(fetch.re):
            m.d.comb += [mem.re.eq(1), mem.addr.eq(fetch.addr)]
        with m.Else():
            m.d.comb += [mem.re.eq(load.re), mem.we.eq(store.we),
                         mem.addr.eq(Mux(store.we, store.addr, load.addr)),
                         mem.wdata.eq(store.wdata)]
        if self.reads == 1:
            m.d.comb += fetch.ready.eq(mem.ready)
            for u in (fetch, load, store):
                m.d.comb += u.rdata.eq(mem.rdata)
            for u in (load, store):
                m.d.comb += u.ready.eq(mem.ready & ~fetch.re)
            return m
        m.submodules.readers = readers = SyncFIFO(width=1, depth=self.reads)
        m.d.comb += [readers.w_en.eq(mem.re & mem.ready), readers.w_data.eq(fetch.re),
                     readers.r_en.eq(mem.rvalid),
                     fetch.rvalid.eq(mem.rvalid & readers.r_data),
                     load.rvalid.eq(mem.rvalid & ~readers.r_data)]
        with m.If(~readers.w_rdy):              # no read while the queue is full
            m.d.comb += mem.re.eq(0)
        for u in (fetch, load, store):
            m.d.comb += u.rdata.eq(mem.rdata)
        m.d.comb += [fetch.ready.eq(mem.ready & readers.w_rdy),
                     load.ready.eq(mem.ready & ~fetch.re & readers.w_rdy),
                     store.ready.eq(mem.ready & ~fetch.re)]
        return m
