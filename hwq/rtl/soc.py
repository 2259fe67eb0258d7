"""The system on the board: the accelerator, its DRAM in on-chip memory, a UART host
link speaking hwq/arch/host_protocol.py's protocol, and status LEDs.

Host memory access has priority over the accelerator: while the SoC reads a word for the
host or writes a checked block into DRAM, the accelerator's DRAM port sees `ready` low
(it holds its request; hwq/rtl/ports.py).

LEDs (as many as the board has): 0 busy, 1 done, 2 the last run stopped with an error.
"""
from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import crc, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwq.arch.config import HwConfig
from hwq.arch.host_protocol import (ACK, ARG_BYTES, CMD_BLOCK, CMD_IDENT, CMD_READ, CMD_START,
                                    CMD_STATUS, CRC_BYTES, CRC_INIT, CRC_POLY, IDENT_BYTES,
                                    NAK, STATUS_BYTES, block_words, ident_bytes)
from hwq.arch.sdram import SdramTiming, check_serves
from hwq.rtl.sdram import SdramController, SdramPins
from hwq.rtl.top import Accelerator
from hwq.rtl.uart import UartRx, UartTx

LEDS = 3


class SinglePortRam(wiring.Component):
    """`depth` words of `width` bits behind one address: `rdata` is the word at last
    cycle's `addr` unless last cycle wrote (`we`), in which case it holds -- what a
    single-port RAM does. On an iCE40 with SPRAM and 16-bit lanes it is SB_SPRAM256KA
    blocks side by side (yosys will not infer them for a memory that Amaranth gives an
    initial value, even all zeros); elsewhere a Memory, which becomes block RAM, written
    a cycle late from registers: its address and data fan out to every block (32 on the
    ECP5-85F), which took the whole cycle after the accelerator's STORE read its data.
    Nothing reads a word in the cycle after writing it (a LOAD's first read comes two
    cycles after the STORE before it ends; the host is slower still)."""

    SPRAM_WORDS, SPRAM_BITS, SPRAMS = 16384, 16, 4       # the iCE40UP5K's

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"addr": In(range(depth)), "we": In(1), "wdata": In(width),
                          "rdata": Out(width)})

    def elaborate(self, platform):
        m = Module()
        lanes = self.width // self.SPRAM_BITS
        if (getattr(platform, "device", "").startswith("iCE40UP")
                and self.width % self.SPRAM_BITS == 0 and lanes <= self.SPRAMS
                and self.depth <= self.SPRAM_WORDS):
            for k in range(lanes):
                sl = slice(k * self.SPRAM_BITS, (k + 1) * self.SPRAM_BITS)
                m.submodules[f"spram{k}"] = Instance(
                    "SB_SPRAM256KA", i_ADDRESS=self.addr, i_DATAIN=self.wdata[sl],
                    i_MASKWREN=0b1111, i_WREN=self.we, i_CHIPSELECT=1, i_CLOCK=ClockSignal(),
                    i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=self.rdata[sl])
            return m
        m.submodules.mem = mem = Memory(shape=unsigned(self.width), depth=self.depth, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        m.d.sync += [wr.addr.eq(self.addr), wr.en.eq(self.we), wr.data.eq(self.wdata)]
        m.d.comb += [rd.addr.eq(self.addr), rd.en.eq(~self.we), self.rdata.eq(rd.data)]
        return m


class BlockWriter(wiring.Component):
    """The staging buffer of the host's block writes: the block's words are written in
    (`w_en`, `w_index`, `w_data`) as they arrive, and once its checksum holds `commit`
    copies the first `commit_n` of them to DRAM from word `commit_addr`, one word a cycle
    on the `dram_*` outputs while `busy` (a block whose checksum fails is never
    committed, so DRAM never sees it). `addr_bits`: DRAM address width. `stall`: the
    memory may hold a write off (`dram_ready` low: the write waits), as an SDRAM
    controller does; block RAM takes one every cycle."""

    def __init__(self, width: int, words: int, addr_bits: int, stall: bool = False):
        self.width, self.words, self.stall = width, words, stall
        super().__init__({
            "w_en": In(1), "w_index": In(range(words)), "w_data": In(width),
            "commit": In(1), "commit_addr": In(addr_bits), "commit_n": In(range(words + 1)),
            "busy": Out(1), "dram_addr": Out(addr_bits), "dram_we": Out(1),
            "dram_wdata": Out(width), **({"dram_ready": In(1)} if stall else {})})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(self.width), depth=self.words, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.w_index), wp.en.eq(self.w_en), wp.data.eq(self.w_data)]
        index = Signal(range(self.words + 1))      # the staging word read this cycle
        left = Signal(range(self.words + 1))       # words still to write
        primed = Signal()                          # the read port holds a word to write
        m.d.comb += [rp.addr.eq(index), self.dram_we.eq(self.busy & primed),
                     self.dram_wdata.eq(rp.data)]
        go = self.busy
        if self.stall:         # a word waiting for the memory holds the staging read port
            go = self.busy & (~primed | self.dram_ready)
            m.d.comb += rp.en.eq(~primed | self.dram_ready)
        with m.If(self.commit & (self.commit_n != 0)):
            m.d.sync += [self.busy.eq(1), index.eq(0), left.eq(self.commit_n), primed.eq(0),
                         self.dram_addr.eq(self.commit_addr)]
        with m.Elif(go):
            m.d.sync += [index.eq(index + 1), primed.eq(1)]
            with m.If(primed):
                m.d.sync += [self.dram_addr.eq(self.dram_addr + 1), left.eq(left - 1)]
                with m.If(left == 1):
                    m.d.sync += [self.busy.eq(0), primed.eq(0)]
        return m


class Soc(wiring.Component):
    """`divisor`: clock cycles per UART bit (clock frequency / baud rate); `sdram`: the
    SDRAM chip at this clock, for a DRAM there behind hwq/rtl/sdram.py's controller (its
    pins the `sdram` port; `io_delay` its read round trip's cycles in the board's I/O),
    else the DRAM is on chip."""

    def __init__(self, cfg: HwConfig, divisor: int, sdram: SdramTiming | None = None,
                 io_delay: int = 0):
        self.cfg, self.divisor, self.chip, self.io_delay = cfg, divisor, sdram, io_delay
        if sdram is not None:
            check_serves(cfg, sdram)
        super().__init__({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1),
                          "leds": Out(LEDS),
                          **({"sdram": Out(SdramPins(sdram))} if sdram else {})})

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        B = 8 * cfg.bus_bytes
        BW = block_words(cfg.bus_bytes)
        m.submodules.accel = acc = Accelerator(cfg)
        m.submodules.rx = rx = UartRx(self.divisor)
        m.submodules.tx = tx = UartTx(self.divisor)
        m.d.comb += [rx.rx.eq(self.uart_rx), self.uart_tx.eq(tx.tx)]

        # ---- DRAM: one port (the host or the accelerator) ----
        m.submodules.stage = stage = BlockWriter(B, BW, acc.A, stall=self.chip is not None)
        addr = Signal(32)                          # the host's word address
        # the host holds the port in READ and while a block is committed: a register set
        # on the way into them (a decode of the FSM state would run on through the
        # accelerator's ready into its DMA units)
        host_busy = Signal()
        host_re = Signal()                         # READ's request (SDRAM)
        host_addr = Mux(stage.busy, stage.dram_addr, addr)
        if self.chip is None:                      # a read holds its data through a write
            m.submodules.dram = dram = SinglePortRam(B, cfg.dram_words)
            m.d.comb += [acc.mem.ready.eq(~host_busy), acc.mem.rdata.eq(dram.rdata)]
            if cfg.dram_reads > 1:          # the block RAM answers every read in the next cycle
                m.d.sync += acc.mem.rvalid.eq(acc.mem.re & acc.mem.ready)
            with m.If(host_busy):
                m.d.comb += [dram.addr.eq(host_addr), dram.we.eq(stage.dram_we),
                             dram.wdata.eq(stage.dram_wdata)]
            with m.Else():
                m.d.comb += [dram.addr.eq(acc.mem.addr), dram.we.eq(acc.mem.we),
                             dram.wdata.eq(acc.mem.wdata)]
            host_rdata, host_rvalid, host_ready = dram.rdata, None, None
        else:
            host_rdata, host_rvalid, host_ready = self._sdram(m, acc, stage, host_busy, host_re, host_addr)
        # the word read, registered (READ_DATA) before it joins `out`'s other sources:
        # the block RAMs' outputs into that multiplexer were one of the ECP5-85F's
        # longest paths
        rd = Signal(B)

        # ---- status LEDs ----
        m.d.comb += self.leds.eq(Cat(acc.busy, acc.done, acc.done & (acc.status != 0)))

        # ---- the checksum of a block frame: from its command byte on, every byte taken
        # from the UART; 0 after the frame's own CRC when the frame arrived intact ----
        m.submodules.crc = check = crc.Algorithm(
            crc_width=8 * CRC_BYTES, polynomial=CRC_POLY, initial_crc=CRC_INIT,
            reflect_input=False, reflect_output=False, xor_output=0)(data_width=8).create()
        m.d.comb += [check.data.eq(rx.data.payload),
                     check.valid.eq(rx.data.valid & rx.data.ready)]

        # ---- command engine ----
        cmd = Signal(8)
        args = Signal(64)                          # up to two u32 arguments, LSB first
        nargs = Signal(range(9))
        count = Signal(32)
        word = Signal(B)
        nbyte = Signal(range(cfg.bus_bytes + 1))
        windex = Signal(range(BW))                 # the block's word being received
        out = Signal(8 * max(STATUS_BYTES, IDENT_BYTES, cfg.bus_bytes))
        nout = Signal(range(len(out) // 8 + 1))
        ident = Const(int.from_bytes(ident_bytes(cfg), "little"), 8 * IDENT_BYTES)
        status = Cat(acc.done, acc.busy, Const(0, 6), acc.status,
                     acc.pc, Const(0, 32 - len(acc.pc)), acc.cycles, acc.macs)

        m.d.comb += tx.data.payload.eq(out[:8])
        # `after_send`: where SEND goes once `out` is empty
        after_send = Signal(2)
        TO_IDLE, TO_READ = 0, 1
        # an answer is chosen (`answer`, its length) in the state that decides it and
        # taken into `out` in the next, LOAD_OUT: loaded from the states' decisions
        # (a 32-bit count compare among them), `out`'s enable ran across its 150-odd
        # flip-flops, one of the ECP5-85F's longest paths
        answers = {"ident": ident, "status": status, "word": rd, "ack": ACK[0], "nak": NAK[0]}
        answer = Signal(range(len(answers)))
        nanswer = Signal.like(nout)

        def send(m, name, nbytes, then=TO_IDLE):
            m.d.sync += [answer.eq(list(answers).index(name)), nanswer.eq(nbytes),
                         after_send.eq(then)]
            m.next = "LOAD_OUT"

        m.d.sync += host_busy.eq(0)                # READ lasts one cycle
        with m.If(stage.busy):
            m.d.sync += host_busy.eq(1)
        with m.FSM(name="host"):
            with m.State("IDLE"):
                m.d.comb += [rx.data.ready.eq(1), check.start.eq(1)]
                with m.If(rx.data.valid):
                    m.d.sync += [cmd.eq(rx.data.payload), nargs.eq(0)]
                    with m.Switch(rx.data.payload):
                        for c, n in ARG_BYTES.items():
                            with m.Case(c[0]):
                                m.d.sync += nargs.eq(n)
                                m.next = "ARGS" if n else "EXEC"
                        with m.Default():
                            send(m, "nak", 1)
            with m.State("ARGS"):
                m.d.comb += rx.data.ready.eq(1)
                with m.If(rx.data.valid):
                    m.d.sync += [args.eq(Cat(args[8:], rx.data.payload)), nargs.eq(nargs - 1)]
                    with m.If(nargs == 1):
                        m.next = "EXEC"
            with m.State("EXEC"):
                # a command with fewer than 8 argument bytes has them at the top of `args`;
                # none starts before the last block's words are in DRAM
                with m.If(~stage.busy), m.Switch(cmd):
                    with m.Case(CMD_IDENT[0]):
                        send(m, "ident", IDENT_BYTES)
                    with m.Case(CMD_STATUS[0]):
                        send(m, "status", STATUS_BYTES)
                    with m.Case(CMD_START[0]):
                        m.d.comb += [acc.start.eq(1), acc.start_pc.eq(args[32:])]
                        send(m, "ack", 1)
                    with m.Case(CMD_BLOCK[0]):
                        m.d.sync += [addr.eq(args[16:48]), count.eq(args[48:]), nbyte.eq(0),
                                     windex.eq(0)]
                        m.next = "BDATA"
                    with m.Case(CMD_READ[0]):
                        m.d.sync += [addr.eq(args[:32]), count.eq(args[32:])]
                        with m.If(args[32:] == 0):
                            m.next = "IDLE"
                        with m.Else():
                            m.d.sync += host_busy.eq(1)
                            m.next = "READ"
            with m.State("BDATA"):
                m.d.comb += rx.data.ready.eq(1)
                with m.If(rx.data.valid):
                    m.d.sync += [word.eq(Cat(word[8:], rx.data.payload)), nbyte.eq(nbyte + 1)]
                    with m.If(nbyte == cfg.bus_bytes - 1):
                        m.d.comb += [stage.w_en.eq(1), stage.w_index.eq(windex),
                                     stage.w_data.eq(Cat(word[8:], rx.data.payload))]
                        m.d.sync += [nbyte.eq(0), windex.eq(windex + 1)]
                        with m.If(windex == BW - 1):
                            m.d.sync += nargs.eq(CRC_BYTES)
                            m.next = "BCRC"
            with m.State("BCRC"):
                m.d.comb += rx.data.ready.eq(1)
                with m.If(rx.data.valid):
                    m.d.sync += nargs.eq(nargs - 1)
                    with m.If(nargs == 1):
                        m.next = "BCHECK"
            with m.State("BCHECK"):
                # the CRC register has taken the frame's last byte
                with m.If(check.match_detected):
                    m.d.comb += [stage.commit.eq(1), stage.commit_addr.eq(addr),
                                 stage.commit_n.eq(Mux(count > BW, BW, count))]
                    m.d.sync += host_busy.eq(1)
                    send(m, "ack", 1)
                with m.Else():
                    send(m, "nak", 1)
            with m.State("READ"):
                if host_rvalid is None:
                    m.d.sync += [addr.eq(addr + 1), count.eq(count - 1)]
                    m.next = "READ_DATA"
                else:                       # the port holds the host's until its answer
                    m.d.sync += host_busy.eq(1)
                    m.d.comb += host_re.eq(1)
                    with m.If(host_ready):
                        m.d.sync += [addr.eq(addr + 1), count.eq(count - 1)]
                        m.next = "READ_DATA"
            with m.State("READ_DATA"):
                if host_rvalid is None:
                    m.d.sync += rd.eq(host_rdata)
                    send(m, "word", cfg.bus_bytes, then=TO_READ)
                else:
                    m.d.sync += host_busy.eq(1)
                    with m.If(host_rvalid):
                        m.d.sync += rd.eq(host_rdata)
                        send(m, "word", cfg.bus_bytes, then=TO_READ)
            with m.State("LOAD_OUT"):
                with m.Switch(answer):
                    for k, value in enumerate(answers.values()):
                        with m.Case(k):
                            m.d.sync += out.eq(value)
                m.d.sync += nout.eq(nanswer)
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += tx.data.valid.eq(nout != 0)
                with m.If(nout == 0):
                    with m.If((after_send == TO_READ) & (count != 0)):
                        m.d.sync += host_busy.eq(1)
                        m.next = "READ"
                    with m.Else():
                        m.next = "IDLE"
                with m.Elif(tx.data.ready):
                    m.d.sync += [out.eq(out >> 8), nout.eq(nout - 1)]
        return m

    def _sdram(self, m, acc, stage, host_busy, host_re, host_addr):
        """The DRAM in SDRAM: the controller's one port shared by the accelerator and the
        host. Answers come back in the order of the reads, so a count of the
        accelerator's reads still unanswered tells whose each answer is: the host reads
        only while the accelerator cannot (`host_busy`), after the accelerator's earlier
        reads. The host's side of the port: (rdata, rvalid, ready)."""
        cfg = self.cfg
        m.submodules.sdram = ctrl = SdramController(self.chip, acc.A, self.io_delay)
        wiring.connect(m, wiring.flipped(self.sdram), ctrl.sdram)
        unanswered = Signal(range(cfg.dram_reads + 1))
        asked = acc.mem.re & acc.mem.ready
        answered = ctrl.port.rvalid & (unanswered != 0)
        m.d.sync += unanswered.eq(unanswered + asked - answered)
        m.d.comb += [acc.mem.ready.eq(ctrl.port.ready & ~host_busy),
                     acc.mem.rdata.eq(ctrl.port.rdata), acc.mem.rvalid.eq(answered),
                     stage.dram_ready.eq(ctrl.port.ready)]
        with m.If(host_busy):
            m.d.comb += [ctrl.port.addr.eq(host_addr), ctrl.port.re.eq(host_re),
                         ctrl.port.we.eq(stage.dram_we), ctrl.port.wdata.eq(stage.dram_wdata)]
        with m.Else():
            m.d.comb += [ctrl.port.addr.eq(acc.mem.addr), ctrl.port.re.eq(acc.mem.re),
                         ctrl.port.we.eq(acc.mem.we), ctrl.port.wdata.eq(acc.mem.wdata)]
        return ctrl.port.rdata, ctrl.port.rvalid & (unanswered == 0), ctrl.port.ready

