"""Verilog out of the Amaranth design, and the simulation top that wraps it in a DRAM.

`generate_verilog(cfg)` is the accelerator alone (module `hwq_accel`, ports as in
hwq/rtl/top.py). `generate_tb_top(cfg)` is a Verilog top `hwq_tb_top` for cocotb:
  * `clk` runs inside the top: the simulator runs the clock without a call into Python
    per edge (Verilator needs --timing for it). In the normal build it is a pulse, one
    time step per 10 ns cycle (it rises every 10 ns and its own posedge's NBA drops it:
    the design only uses posedges), which halves the time steps Verilator and its VPI
    layer go through per cycle; the waveform and trace builds (`clock="toggle"`) keep
    an ordinary `always #5` clock a waveform viewer shows. `tb_tick` toggles at every
    posedge: the cocotb test waits on it, never on `clk` (a pulse within one time step
    is no value change for VPI). Reset is a power-on reset (the first 3 cycles) OR
    `tb_rst`;
  * `dram`: `reg [W-1:0] dram [0:dram_words-1]`, zeroed, then `$readmemh` of the
    `+HWQ_IMAGE=<file>` plusarg at time 0;
  * the DRAM port model: `ready` always high (or, with `+HWQ_STALL=1`, low on a
    pseudo-random quarter of the cycles), writes at the clock edge, read data the cycle
    after the accepted request -- for a config with reads in flight (`dram_reads` > 1)
    with `rvalid`, and with `+HWQ_LATENCY` 1 to 8 cycles later than that, pseudo-random,
    the reads answered in order;
  * host commands, one clock edge each, on reg `tb_cmd`: 1 = `$readmemh` `<HWQ_DIR>/load.hex`
    (only the `@addr` lines it holds are written), 2 = `$writememh` words
    `tb_lo..tb_hi` to `<HWQ_DIR>/dump.hex`;
  * `tb_start` / `tb_start_pc` drive the accelerator, through registers (it sees them a
    cycle after they are written); `done`, `busy`, `status`, `pc`, `cycles`, `macs`,
    `perf` are its outputs.
With trace=True (the differential-checking build) the top also writes, under
`+HWQ_TRACE`, every buffer write, DRAM write and instruction issue to
`<HWQ_DIR>/trace.txt`, one line each:
    w <buf index> <addr> <enable mask> <data> <unit>   (hex; buf index in isa.BUFFERS
                                                        order, unit in top.UNITS order)
    d <addr> <data>                                    (a DRAM word written, by STORE)
    i <pc>                                             (an instruction started its unit,
                                                        or stopped the run)
and dumps a waveform from the cycle instruction `+HWQ_WAVE_FROM=a` issues (counted from 0 at
each start) until, after the issue of `+HWQ_WAVE_TO=b`, unit `+HWQ_WAVE_UNIT=u` (index
in top.UNITS; default: every unit) is idle, to `<HWQ_DIR>/window.vcd`, then raises
`wave_done` (the test then ends the simulation).
"""
from __future__ import annotations

from functools import lru_cache

from amaranth.back import verilog
from amaranth.hdl import Shape

from hwq.arch.config import HwConfig
from hwq.rtl.dma import dram_addr_bits
from hwq.arch import isa
from hwq.arch.perf import COUNTER_BITS, COUNTERS
from hwq.rtl.faults import accelerator
from hwq.rtl.top import PC_BITS, STATUS_BITS, TraceSignature

ACCEL_MODULE = "hwq_accel"
TB_MODULE = "hwq_tb_top"
CLOCK_PERIOD_NS = 10


@lru_cache(maxsize=16)
def generate_verilog(cfg: HwConfig, fault: str | None = None) -> str:
    """Verilog of the accelerator for `cfg` (with `fault`: a broken variant,
    hwq/rtl/faults.py) as module `hwq_accel`."""
    return verilog.convert(accelerator(cfg, fault), name=ACCEL_MODULE, emit_src=False)


def _trace_logic(cfg: HwConfig) -> tuple[str, str]:
    """(declarations + always block, port connections) of the trace top."""
    sig = TraceSignature(cfg)
    widths = {n: Shape.cast(sig.members[n].shape).width for n in sig.members}
    decl = [f"  wire [{w - 1}:0] tr_{n};" for n, w in widths.items()]
    conns = ", ".join(f".trace__{n}(tr_{n})" for n in sig.members)
    writes = "\n".join(
        f"      if (|tr_{b}_en) $fwrite(trace_fd, \"w {k} %h %h %h %h\\n\", tr_{b}_addr, tr_{b}_en, "
        f"tr_{b}_data, tr_{b}_unit);"
        for k, b in enumerate(isa.BUFFERS))
    logic = "\n".join(decl) + f"""
  integer trace_fd = 0;
  integer n_issued = 0;
  integer wave_from = -1, wave_to = -1, wave_unit = -1;
  reg dumping = 1'b0;
  reg wave_done /*verilator public_flat_rd*/ = 1'b0;
  string trace_file, wave_file;
  initial begin
    if ($test$plusargs("HWQ_TRACE")) begin
      trace_file = {{dir, "/trace.txt"}};
      trace_fd = $fopen(trace_file, "w");
    end
    if (!$value$plusargs("HWQ_WAVE_FROM=%d", wave_from)) wave_from = -1;
    if (!$value$plusargs("HWQ_WAVE_TO=%d", wave_to)) wave_to = -1;
    if (!$value$plusargs("HWQ_WAVE_UNIT=%d", wave_unit)) wave_unit = -1;
  end
  always @(posedge clk) begin
    if (tb_start_q) n_issued <= 0;
    if (trace_fd != 0) begin
{writes}
      if (mem_ready && mem_we) $fwrite(trace_fd, "d %h %h\\n", mem_addr, mem_wdata);
      if (tr_issue) $fwrite(trace_fd, "i %h\\n", pc);
      if (tr_issue) $fflush(trace_fd);
    end
    if (tr_issue) n_issued <= n_issued + 1;
    if (wave_from >= 0 && !dumping && tr_issue && n_issued == wave_from) begin
      wave_file = {{dir, "/window.vcd"}};
      $dumpfile(wave_file);
      $dumpvars(0, dut);
      dumping <= 1'b1;
    end
    // $dumpoff does nothing on the Verilator build: wave_done also ends the test
    if (dumping && !wave_done && n_issued > wave_to
        && (wave_unit < 0 ? tr_busy == 0 : !tr_busy[wave_unit])) begin
      $dumpoff;
      wave_done <= 1'b1;
    end
  end"""
    return logic, ", " + conns


def _read_model(cfg: HwConfig) -> tuple[str, str, str]:
    """The DRAM model's reads: the data in the cycle after the request, or, for a config
    with reads in flight, with `rvalid` and under `+HWQ_LATENCY` a queue that answers
    each 1..8 cycles later (in order: never before the read ahead of it)."""
    now = "    if (mem_ready && mem_re) mem_rdata <= dram[mem_addr];"
    if cfg.dram_reads == 1:
        return "", now, ""
    W = 8 * cfg.bus_bytes
    decl = f"""\
  reg mem_rvalid = 1'b0;
  reg tb_late = 1'b0;
  reg [{W - 1}:0] late_data [0:127];
  reg [31:0] late_due [0:127];
  reg [6:0] late_head = 0, late_tail = 0;
  reg [31:0] now = 0, last_due = 0;
  wire [31:0] due = now + 32'd1 + lfsr[4:2];
  initial if ($test$plusargs("HWQ_LATENCY")) tb_late = 1'b1;
"""
    logic = f"""\
    now <= now + 32'd1;
    if (!tb_late) begin
{now}
      mem_rvalid <= mem_ready && mem_re;
    end else begin
      if (mem_ready && mem_re) begin
        late_data[late_tail] <= dram[mem_addr];
        late_due[late_tail] <= due > last_due ? due : last_due;
        last_due <= due > last_due ? due : last_due;
        late_tail <= late_tail + 7'd1;
      end
      mem_rvalid <= 1'b0;
      if (late_head != late_tail && late_due[late_head] <= now) begin
        mem_rdata <= late_data[late_head];
        mem_rvalid <= 1'b1;
        late_head <= late_head + 7'd1;
      end
    end"""
    return decl, logic, ", .mem__rvalid(mem_rvalid)"


def generate_tb_top(cfg: HwConfig, trace: bool = False, clock: str | None = None) -> str:
    """The cocotb top (module doc). clock: 'pulse' or 'toggle'; default 'toggle' for the
    trace build, else 'pulse'."""
    clock = clock or ("toggle" if trace else "pulse")
    if clock == "pulse":
        clk_logic = (f"  always #{CLOCK_PERIOD_NS} clk = 1'b1;     // a pulse: its posedge's NBA drops it\n"
                     f"  always @(posedge clk) clk <= 1'b0;")
    elif clock == "toggle":
        clk_logic = f"  always #{CLOCK_PERIOD_NS // 2} clk = !clk;"
    else:
        raise ValueError(f"clock must be 'pulse' or 'toggle', not {clock!r}")
    W = 8 * cfg.bus_bytes
    A = dram_addr_bits(cfg)
    N = cfg.dram_words
    trace_logic, trace_conns = _trace_logic(cfg) if trace else ("", "")
    latency_decl, read_logic, rvalid_conn = _read_model(cfg)
    return f"""\
`timescale 1ns/1ps
// generated by hwq.rtl.export.generate_tb_top for config '{cfg.name}' ({cfg.fingerprint})
module {TB_MODULE};
  reg clk = 1'b0;
{clk_logic}
  reg tb_tick /*verilator public_flat_rd*/ = 1'b0;   // toggles at every posedge
  always @(posedge clk) tb_tick <= !tb_tick;
  reg [1:0] por_count = 2'd0;
  wire por = por_count != 2'd3;
  reg tb_rst /*verilator public_flat_rw*/ = 1'b0;
  reg tb_start /*verilator public_flat_rw*/ = 1'b0;
  reg [{PC_BITS - 1}:0] tb_start_pc /*verilator public_flat_rw*/ = 0;
  reg [1:0] tb_cmd /*verilator public_flat_rw*/ = 2'd0;
  reg [31:0] tb_lo /*verilator public_flat_rw*/ = 0;
  reg [31:0] tb_hi /*verilator public_flat_rw*/ = 0;
  reg tb_stall = 1'b0;
  // the LFSR state one step before 16'hace1: the accelerator sees tb_start a cycle late
  // (below), so its stall pattern is the one it always had
  reg [15:0] lfsr = 16'hd670;
  integer i;

  wire done /*verilator public_flat_rd*/;
  wire busy /*verilator public_flat_rd*/;
  wire [{STATUS_BITS - 1}:0] status /*verilator public_flat_rd*/;
  wire [{PC_BITS - 1}:0] pc /*verilator public_flat_rd*/;
  wire [{COUNTER_BITS - 1}:0] cycles /*verilator public_flat_rd*/;
  wire [{COUNTER_BITS - 1}:0] macs /*verilator public_flat_rd*/;
  wire [{COUNTER_BITS * len(COUNTERS) - 1}:0] perf /*verilator public_flat_rd*/;
  wire [{A - 1}:0] mem_addr;
  wire mem_re, mem_we;
  wire [{W - 1}:0] mem_wdata;
  reg [{W - 1}:0] mem_rdata = 0;
  wire mem_ready = !tb_stall || (lfsr[1:0] != 2'b00);
{latency_decl}
  reg [{W - 1}:0] dram [0:{N - 1}];
  string dir, image, load_file, dump_file;

  initial begin
    for (i = 0; i < {N}; i = i + 1) dram[i] = 0;
    if (!$value$plusargs("HWQ_DIR=%s", dir)) dir = ".";
    load_file = {{dir, "/load.hex"}};
    dump_file = {{dir, "/dump.hex"}};
    if ($value$plusargs("HWQ_IMAGE=%s", image)) $readmemh(image, dram);
    if ($test$plusargs("HWQ_STALL")) tb_stall = 1'b1;
  end

  // cocotb's writes reach the accelerator through registers (a cycle later): a
  // combinational path from a VPI-written signal into the design is logic Verilator
  // evaluates again on every eval (its input-combinational region, both clock edges)
  reg tb_rst_q = 1'b0, tb_start_q = 1'b0;
  reg [{PC_BITS - 1}:0] tb_start_pc_q = 0;
  always @(posedge clk) begin
    tb_rst_q <= tb_rst;
    tb_start_q <= tb_start;
    tb_start_pc_q <= tb_start_pc;
  end

  always @(posedge clk) begin
    if (por) por_count <= por_count + 2'd1;
    lfsr <= {{lfsr[14:0], lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]}};
    if (mem_ready && mem_we) dram[mem_addr] <= mem_wdata;
{read_logic}
    if (tb_cmd == 2'd1) $readmemh(load_file, dram);
    if (tb_cmd == 2'd2) $writememh(dump_file, dram, tb_lo, tb_hi);
  end
{trace_logic}

  {ACCEL_MODULE} dut (
    .clk(clk), .rst(por | tb_rst_q),
    .start(tb_start_q), .start_pc(tb_start_pc_q),
    .done(done), .busy(busy), .status(status), .pc(pc), .cycles(cycles), .macs(macs),
    .perf(perf){trace_conns},
    .mem__addr(mem_addr), .mem__re(mem_re), .mem__we(mem_we), .mem__wdata(mem_wdata),
    .mem__rdata(mem_rdata), .mem__ready(mem_ready){rvalid_conn}
  );
endmodule
"""
