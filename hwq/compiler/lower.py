"""Back end: lower each quantized layer onto the array and emit the whole network as one
program plus the DRAM image it runs over.

Every layer reads its input from DRAM and writes its output to DRAM; the host only
writes the input slot and reads the output slot. A conv (Linear is a 1x1 conv over one
pixel) is cut into bands of output rows that fit the buffers; for each band the input
rows are loaded once per input-channel block with the zero padding made by the DMA, and
for each output-channel block the weight-stationary array streams the band once per
(ky, kx, input block) tile, accumulating in abuf, before POST requantizes and STORE
writes the block back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq.compiler import isa
from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.layout import MemoryMap, Region, TensorLayout
from hwq.compiler.quant.requant import ROUND_MODES
from hwq.config import HwConfig
from hwq.errors import HwqError


@dataclass
class Compiled:
    cfg: HwConfig
    program: list[isa.Instr]
    notes: dict[int, str]                 # instruction index -> "layer / tile"
    layer_of: list[str]                   # instruction index -> layer name
    image: bytes                          # DRAM from word 0: data, then the program
    memmap: MemoryMap
    layouts: dict[str, TensorLayout]      # "input" and every layer's output
    start_pc: int
    layer_macs: dict[str, int]            # real MACs of one inference (no padding lanes)

    @property
    def useful_macs(self) -> int:
        return sum(self.layer_macs.values())

    @property
    def program_bytes(self) -> bytes:
        return isa.to_bytes(self.program)


@dataclass
class _Emitter:
    cfg: HwConfig
    program: list[isa.Instr] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    layer_of: list[str] = field(default_factory=list)
    layer: str = ""

    def __call__(self, op: str, note: str = "", **fields: int) -> None:
        try:
            instr = isa.Instr.make(op, **fields)
        except isa.IsaError as e:
            raise HwqError(f"layer '{self.layer}' does not fit the ISA: {e}; "
                           "use smaller tiles or a larger hardware config") from None
        if note:
            self.notes[len(self.program)] = f"{self.layer}: {note}"
        self.layer_of.append(self.layer)
        self.program.append(instr)


def _need(cond: bool, layer: QLayer, what: str) -> None:
    if not cond:
        raise HwqError(f"layer '{layer.name}' does not fit the hardware: {what}")


class _Image:
    """The DRAM bytes of the constant regions (weights, biases)."""

    def __init__(self, memmap: MemoryMap):
        self.memmap, self.chunks = memmap, []

    def put(self, name: str, kind: str, data: np.ndarray) -> Region:
        region = self.memmap.allocate(name, kind, data.nbytes)
        self.chunks.append((region, data.tobytes()))
        return region

    def assemble(self, total_words: int) -> bytearray:
        bus = self.memmap.cfg.bus_bytes
        out = bytearray(total_words * bus)
        for region, blob in self.chunks:
            out[region.word * bus: region.word * bus + len(blob)] = blob
        return out


def _load_run(emit: _Emitter, note: str, buf: int, sram: int, dram: int, entries: int,
              entry_words: int) -> None:
    """LOAD `entries` consecutive entries, in as many instructions as x_size needs."""
    most = isa.BY_NAME["LOAD"].field("x_size").hi
    for first in range(0, entries, most):
        n = min(most, entries - first)
        emit("LOAD", note, buf=buf, sram=sram + first, dram=dram + first * entry_words,
             y_size=1, x_size=n, y_stride=0, x_stride=entry_words, pad_top=0,
             pad_bottom=0, pad_left=0, pad_right=0)


def _band_rows(layer: QLayer, out_h: int, fits) -> int:
    """Largest number of output rows per band for which `fits(rows)` holds."""
    best = 0
    for rows in range(1, out_h + 1):
        if not fits(rows):
            break
        best = rows
    _need(best > 0, layer, "one output row does not fit the on-chip buffers; "
          "use a hardware config with deeper buffers")
    return best


def lower_conv(layer: QLayer, src: TensorLayout, dst: TensorLayout, cfg: HwConfig,
               image: _Image, emit: _Emitter) -> int:
    r, c, bus = cfg.rows, cfg.cols, cfg.bus_bytes
    cout, cin, k, _ = layer.weight.shape
    s, p = layer.stride, layer.padding
    _need(p <= 7, layer, f"padding {p} exceeds the DMA's 7")
    n_ci, n_co = src.stored_channels // r, dst.stored_channels // c
    out_h, out_w = dst.h, dst.w
    wp = src.w + 2 * p

    # Weights in stored-channel order; tile (co, ci, ky, kx) is `rows` wbuf entries, so
    # the taps of any run of input blocks are contiguous in DRAM.
    w = np.zeros((n_co * c, src.stored_channels, k, k), np.int8)
    w[np.arange(cout)[:, None], src.channel_index[None, :]] = layer.weight
    tiles = w.reshape(n_co, c, n_ci, r, k, k).transpose(0, 2, 4, 5, 3, 1)  # co ci ky kx r c
    taps = n_ci * k * k                       # weight tiles per output block
    _need(r <= cfg.wbuf_depth, layer, f"a weight tile needs {r} wbuf entries, wbuf_depth={cfg.wbuf_depth}")
    w_region = image.put(f"{layer.name}.weight", "weights", np.ascontiguousarray(tiles))
    bias = np.zeros(n_co * c, np.int32)
    bias[:cout] = layer.bias
    b_region = image.put(f"{layer.name}.bias", "bias", bias)

    ew = c // bus  # words per wbuf entry, and per output block of a pixel
    bias_resident = n_co <= cfg.bbuf_depth
    if bias_resident:
        _load_run(emit, "bias", 2, 0, b_region.word, n_co, 4 * ew)
    weights_resident = n_co * taps * r <= cfg.wbuf_depth
    if weights_resident:
        _load_run(emit, "weights", 1, 0, w_region.word, n_co * taps * r, ew)
    chunk = taps if weights_resident else cfg.wbuf_depth // r   # tiles per weight load

    def in_rows(rows: int) -> int:
        return (rows - 1) * s + k

    # Input blocks held in ibuf at once: all of them when one output row allows it (each
    # band's input is then loaded once), else as many as fit, reloaded per output block.
    group = max((g for g in range(1, n_ci + 1) if g * in_rows(1) * wp <= cfg.ibuf_depth), default=0)
    _need(group > 0, layer, f"one input row of {wp} pixels does not fit ibuf_depth={cfg.ibuf_depth}")
    band = _band_rows(layer, out_h, lambda rows: group * in_rows(rows) * wp <= cfg.ibuf_depth
                      and rows * out_w <= min(cfg.abuf_depth, cfg.obuf_depth)
                      and rows <= 1023)
    pin, pout = src.pixel_words(cfg), dst.pixel_words(cfg)
    for r0 in range(0, out_h, band):
        rows = min(band, out_h - r0)
        top = r0 * s - p                       # first input row the band reads (may be < 0)
        n = in_rows(rows)
        y0, y1 = max(top, 0), min(top + n, src.h)
        if y1 <= y0:                           # the band reads padding only (k <= padding)
            y0 = y1 = 0
            pad_top, pad_bottom = n, 0
        else:
            pad_top, pad_bottom = y0 - top, top + n - y1
        span = n * wp

        def load_inputs(ci0: int, ci1: int) -> None:
            for ci in range(ci0, ci1):
                emit("LOAD", f"rows {r0}..{r0 + rows - 1} input block {ci}", buf=0,
                     sram=(ci - ci0) * span, dram=src.region.word + y0 * src.w * pin + ci * (r // bus),
                     y_size=y1 - y0, x_size=src.w, y_stride=src.w * pin, x_stride=pin,
                     pad_top=pad_top, pad_bottom=pad_bottom, pad_left=p, pad_right=p)

        if group == n_ci:
            load_inputs(0, n_ci)
        for co in range(n_co):
            tile = f"rows {r0}..{r0 + rows - 1} output block {co}"
            for ci0 in range(0, n_ci, group):
                ci1 = min(ci0 + group, n_ci)
                if group < n_ci:
                    load_inputs(ci0, ci1)
                for t0 in range(ci0 * k * k, ci1 * k * k, chunk):
                    t1 = min(t0 + chunk, ci1 * k * k)
                    if not weights_resident:
                        _load_run(emit, f"{tile} weights {t0}..{t1 - 1}", 1, 0,
                                  w_region.word + (co * taps + t0) * r * ew, (t1 - t0) * r, ew)
                    for t in range(t0, t1):
                        ci, tap = divmod(t, k * k)
                        ky, kx = divmod(tap, k)
                        wgt = (co * taps + t) * r if weights_resident else (t - t0) * r
                        emit("GEMM", f"{tile} tap ({ky},{kx}) input block {ci}",
                             wgt=wgt, inp=(ci - ci0) * span + ky * wp + kx, acc=0,
                             reset=int(t == 0), n_outer=rows, n_inner=out_w, inp_so=s * wp,
                             inp_si=s, acc_so=out_w, acc_si=1)
            if not bias_resident:
                _load_run(emit, f"{tile} bias", 2, 0, b_region.word + co * 4 * ew, 1, 4 * ew)
            emit("POST", tile, acc=0, out=0, bias=co if bias_resident else 0, n=rows * out_w,
                 shift=layer.shift,
                 round=ROUND_MODES[layer.round_mode], lo=layer.lo, hi=layer.hi)
            emit("STORE", tile, sram=0, dram=dst.region.word + r0 * out_w * pout + co * ew,
                 y_size=rows, x_size=out_w, y_stride=out_w * pout, x_stride=pout)
    return out_h * out_w * cout * cin * k * k


def lower_maxpool(layer: QLayer, src: TensorLayout, dst: TensorLayout, cfg: HwConfig,
                  image: _Image, emit: _Emitter) -> int:
    k, s, c, bus = layer.kernel, layer.stride, cfg.cols, cfg.bus_bytes
    out_h, out_w = dst.h, dst.w

    def in_rows(rows: int) -> int:
        return (rows - 1) * s + k

    band = _band_rows(layer, out_h, lambda rows: in_rows(rows) * src.w + rows * out_w
                      <= cfg.obuf_depth and rows <= 255)
    pix = src.pixel_words(cfg)
    for cb in range(src.stored_channels // c):
        for r0 in range(0, out_h, band):
            rows = min(band, out_h - r0)
            tile = f"rows {r0}..{r0 + rows - 1} channel block {cb}"
            emit("LOAD", tile, buf=3, sram=0, dram=src.region.word + r0 * s * src.w * pix + cb * (c // bus),
                 y_size=in_rows(rows), x_size=src.w, y_stride=src.w * pix, x_stride=pix,
                 pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)
            emit("MAXPOOL", tile, src=0, dst=in_rows(rows) * src.w, out_h=rows, out_w=out_w,
                 in_w=src.w, k_h=k, k_w=k, stride=s)
            emit("STORE", tile, sram=in_rows(rows) * src.w,
                 dram=dst.region.word + r0 * out_w * pix + cb * (c // bus),
                 y_size=rows, x_size=out_w, y_stride=out_w * pix, x_stride=pix)
    return 0


LOWERINGS = {"conv": lower_conv, "maxpool": lower_maxpool}


def _flatten_view(src: TensorLayout) -> TensorLayout:
    """Flatten moves no data: the pixel-major bytes are read as one long pixel, and
    torch's channel-major order (c, y, x) is mapped onto them."""
    c = src.channel_index.size
    yx = np.arange(src.h * src.w)
    index = (yx[None, :] * src.stored_channels + src.channel_index[:, None]).ravel()
    assert index.size == c * src.h * src.w
    return TensorLayout(src.region, 1, 1, src.h * src.w * src.stored_channels, index)


def compile_model(qmodel: QModel, cfg: HwConfig) -> Compiled:
    memmap = MemoryMap(cfg)
    image = _Image(memmap)
    emit = _Emitter(cfg)
    layouts = {"input": memmap.activation("input", "input", qmodel.input_shape)}
    macs = {}
    last = qmodel.layers[-1].name
    for layer in qmodel.layers:
        emit.layer = layer.name
        src = layouts[layer.input]
        if layer.kind == "flatten":
            layouts[layer.name] = _flatten_view(src)
            continue
        if layer.kind not in LOWERINGS:
            raise HwqError(f"layer '{layer.name}': no lowering for kind '{layer.kind}'")
        dst = memmap.activation(layer.name, "output" if layer.name == last else "activation",
                                layer.out_shape)
        layouts[layer.name] = dst
        macs[layer.name] = LOWERINGS[layer.kind](layer, src, dst, cfg, image, emit)
    emit.layer = "end"
    emit("END")
    program = isa.to_bytes(emit.program)
    code = memmap.allocate("program", "program", len(program))
    data = image.assemble(memmap.next_word)
    data[code.word * cfg.bus_bytes:] = program
    return Compiled(cfg, emit.program, emit.notes, emit.layer_of, bytes(data), memmap, layouts,
                    code.word, macs)
