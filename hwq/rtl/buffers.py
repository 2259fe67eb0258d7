"""The five buffers, and which unit port drives each of their ports.

Each buffer is a Memory with one write port and one synchronous read port (a block RAM;
ports as in hwq/rtl/ports.py). WRITERS and READERS list the unit ports wired to each;
the crossbar has a port of the same signature for each unit port (`member`), for the
top to `connect`.

Two units never use a buffer's port at once (a port hazard, isa.hazard), so a shared
port needs a multiplexer, not an arbiter: the enables are the OR of every source's, and
the address, the data and the unit's index come from the source that holds the port --
the first whose unit holds it (`holds`), else the last -- off the enables' paths. A port
with one source takes them straight from it. Reading, a read port holds its data while
no source enables it.

LOAD has one write port for its four targets: its `target` picks the buffer, which
takes the port's first entry_words lanes.

`trace` mirrors each buffer's write port and names the unit driving it, for
differential testing (hwq/rtl/top.py); nothing in the hardware reads it.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.arch.perf import UNIT_OF_OP
from hwq.rtl.dma import load_lanes
from hwq.rtl.pe import ACC_BITS
from hwq.rtl.ports import UNITS, SramRead, SramWrite

BUFFER_BITS = {"ibuf": lambda cfg: 8 * cfg.rows, "wbuf": lambda cfg: 8 * cfg.cols,
               "bbuf": lambda cfg: ACC_BITS * cfg.cols, "abuf": lambda cfg: ACC_BITS * cfg.cols,
               "obuf": lambda cfg: 8 * cfg.cols}
# buffer -> the (unit, port) pairs that share its write port / its read port, the
# preferred first (module doc)
WRITERS = {"ibuf": (("LOAD", "wr"),),
           "wbuf": (("LOAD", "wr"),),
           "bbuf": (("LOAD", "wr"),),
           "abuf": (("GEMM", "abuf_wr"),),
           "obuf": (("LOAD", "wr"), ("POST", "obuf"), ("MAXPOOL", "wr"))}
READERS = {"ibuf": (("GEMM", "ibuf"),),
           "wbuf": (("GEMM", "wbuf"),),
           "bbuf": (("POST", "bbuf"),),
           "abuf": (("GEMM", "abuf_rd"), ("POST", "abuf")),
           "obuf": (("STORE", "rd"), ("MAXPOOL", "rd"))}
# every unit port wired to a buffer, once
UNIT_PORTS = tuple(dict.fromkeys(p for table in (WRITERS, READERS)
                                 for ports in table.values() for p in ports))


def member(unit: str, port: str) -> str:
    """The crossbar's port for `unit`'s `port`: e.g. `gemm_abuf_rd`."""
    return f"{UNIT_OF_OP[unit]}_{port}"


def write_lanes(cfg: HwConfig, buf: str) -> int:
    """Write-enable bits of a buffer: one per bus word of an entry (abuf: one)."""
    return 1 if buf == "abuf" else cfg.entry_words(buf)


class WriteTrace(wiring.Signature):
    """Every buffer's write port, mirrored: `<buf>_addr`, `_en`, `_data`, and the unit
    driving it (`<buf>_unit`, an index into UNITS)."""

    def __init__(self, cfg: HwConfig):
        members = {}
        for b in isa.BUFFERS:
            members[f"{b}_addr"] = Out(isa.SRAM_ADDR_BITS)
            members[f"{b}_en"] = Out(write_lanes(cfg, b))
            members[f"{b}_data"] = Out(BUFFER_BITS[b](cfg))
            members[f"{b}_unit"] = Out(range(len(UNITS)))
        super().__init__(members)


def _mux_write(m, port, unit_index, sources):
    """Drive a memory write port from its sources, (unit, address, enables, data,
    owner), and `unit_index` with the index of the unit driving it (module doc)."""
    unit, addr, en, data, _ = sources[-1]
    index = UNITS.index(unit)
    for unit, a, e, d, owner in reversed(sources[:-1]):
        addr, data = Mux(owner, a, addr), Mux(owner, d, data)
        index = Mux(owner, UNITS.index(unit), index)
        en = en | e
    m.d.comb += [port.addr.eq(addr), port.en.eq(en), port.data.eq(data), unit_index.eq(index)]


def _mux_read(m, port, sources):
    """Drive a synchronous read port from its sources, (address, enable, owner): it reads
    when a source enables it, and with no read it is disabled, so its data holds (a
    ReadPort's `en` defaults to 1)."""
    addr = sources[-1][0]
    for a, _, owner in reversed(sources[:-1]):
        addr = Mux(owner, a, addr)
    m.d.comb += [port.addr.eq(addr), port.en.eq(Cat(en for _, en, _ in sources).any())]


class BufferCrossbar(wiring.Component):
    """The buffers (module doc). Ports: one per unit port in UNIT_PORTS (`member`), the
    unit's flipped; `busy` (each unit's, UNITS order), `draining` (GEMM's array) and
    `load_target` (the `buf` field of the LOAD running) say who holds a shared port;
    `trace` (WriteTrace)."""

    def __init__(self, cfg: HwConfig):
        self.cfg = cfg
        A = isa.SRAM_ADDR_BITS
        members = {}
        for buf, writers in WRITERS.items():
            for unit, port in writers:
                if unit == "LOAD":
                    lanes = load_lanes(cfg)
                    sig = SramWrite(A, lanes * 8 * cfg.bus_bytes, lanes)
                else:
                    sig = SramWrite(A, BUFFER_BITS[buf](cfg))
                members.setdefault(member(unit, port), In(sig))
        for buf, readers in READERS.items():
            for unit, port in readers:
                members[member(unit, port)] = In(SramRead(A, BUFFER_BITS[buf](cfg)))
        super().__init__({
            **members,
            "busy": In(len(UNITS)),
            "draining": In(1),
            "load_target": In(range(len(isa.LOAD_TARGETS))),
            "trace": Out(WriteTrace(cfg)),
        })

    def holds(self, unit: str, buf: str):
        """High while `unit` holds its port of `buf`: LOAD while it runs into `buf`, GEMM
        while its array drains (its abuf reads and writes), any other unit while it is
        busy."""
        if unit == "GEMM":
            return self.draining
        busy = self.busy[UNITS.index(unit)]
        return busy & self._load_into(buf) if unit == "LOAD" else busy

    def _load_into(self, buf: str):
        return self.load_target == isa.LOAD_TARGETS.index(buf)

    def _write_source(self, unit: str, port: str, buf: str):
        p = getattr(self, member(unit, port))
        if unit == "LOAD":
            e = self.cfg.entry_words(buf)
            en = p.en[:e] & self._load_into(buf).replicate(e)
            data = p.data[:e * 8 * self.cfg.bus_bytes]
        else:
            en, data = p.en.replicate(write_lanes(self.cfg, buf)), p.data
        return unit, p.addr, en, data, self.holds(unit, buf)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        for buf in isa.BUFFERS:
            mem = Memory(shape=unsigned(BUFFER_BITS[buf](cfg)), depth=getattr(cfg, f"{buf}_depth"),
                         init=[])
            m.submodules[buf] = mem
            wp = mem.write_port(granularity=None if buf == "abuf" else 8 * cfg.bus_bytes)
            rp = mem.read_port()
            _mux_write(m, wp, getattr(self.trace, f"{buf}_unit"),
                       [self._write_source(unit, port, buf) for unit, port in WRITERS[buf]])
            m.d.comb += [getattr(self.trace, f"{buf}_addr").eq(wp.addr),
                         getattr(self.trace, f"{buf}_en").eq(wp.en),
                         getattr(self.trace, f"{buf}_data").eq(wp.data)]
            readers = [(unit, getattr(self, member(unit, port))) for unit, port in READERS[buf]]
            _mux_read(m, rp, [(p.addr, p.en, self.holds(unit, buf)) for unit, p in readers])
            m.d.comb += [p.data.eq(rp.data) for _, p in readers]
        return m
