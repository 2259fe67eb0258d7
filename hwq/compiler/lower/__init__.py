"""Back end: lower each quantized layer onto the array and emit the whole network as one
program plus the DRAM image it runs over.

Every layer reads its input from DRAM and writes its output to DRAM; the host only
writes the input slot and reads the output slot. A conv (Linear is a 1x1 conv over one
pixel) is cut into bands of output rows; a band's input is loaded with the zero padding
made by the DMA, all its input-channel blocks at once or in groups, and the weight-
stationary array streams the band once per (input block, ky, kx) tile of each output
block, accumulating in abuf, before POST requantizes and STORE writes the block back.
Output blocks go in runs that accumulate side by side, so that each input group is
loaded once per run; tiles whose weights are all zero (across the groups of a grouped
conv) are neither stored nor streamed, and tiles that repeat (an average pool's, an
add's) are stored once. The cut -- band height, input groups, run length -- is the cheapest
of a few candidates by an estimate on the cycle model's numbers (`plan.conv_cost`).

The accelerator overlaps its units but starts instructions in program order (isa.py), so
the schedule decides what overlaps: a conv splits obuf into two slots (POST of the next
block beside STORE of this one), abuf into two where the runs allow, and, where weights
stream, wbuf (the next chunk loads while this one's GEMMs run), and ibuf (the next input
group loads while the array streams this one); each LOAD is placed after the first GEMM
that no longer needs the slot it fills, spaced so that it never waits for the DRAM port
in the way of the GEMMs behind it, and each STORE among the next block's GEMMs once its
POST is done. Max-pool gains nothing from slots: its LOAD, MAXPOOL and STORE share obuf
ports or the DRAM port.

A batch of N inputs (`compile_model(batch=N)`) runs in one go: a layer whose windows are
single pixels (a Linear, a 1x1 conv, an add, a concat) runs once over the N images
stacked into one tall image, so that every weight tile streams N times as many vectors;
any other layer runs image by image (a conv's bands of each image after the other's, so
that weights that stay on chip load once for all of them), its weights stored once.

The modules, each importing only those after it: kinds (the lowering of each layer
kind), conv (a conv onto the array), plan (how a conv is cut), schedule (where its
LOADs and STOREs go among the GEMMs), emit (the program and the DRAM image).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hwq.arch import isa
from hwq.arch.config import HwConfig
from hwq.compiler.ir import QModel
from hwq.compiler.layout import MemoryMap, TensorLayout, Unfold, padded_channels
from hwq.compiler.lower.emit import Emitter, Image
from hwq.compiler.lower.kinds import LOWERINGS, channel_view, flatten_view
from hwq.errors import HwqError


@dataclass
class Compiled:
    """A network compiled for `cfg`: the program, the DRAM image it runs over, and where
    everything lies in it."""
    cfg: HwConfig
    program: list[isa.Instr]
    notes: dict[int, str]                 # instruction index -> "layer / tile"
    layer_of: list[str]                   # instruction index -> layer name
    image: bytes                          # DRAM from word 0: data, then the program
    memmap: MemoryMap
    layouts: dict[str, TensorLayout]      # "input" and every layer's output
    start_pc: int
    layer_macs: dict[str, int]            # real MACs of one run, the batch's (no padding lanes)
    batch: int = 1                        # inputs per run

    @property
    def useful_macs(self) -> int:
        return sum(self.layer_macs.values())

    @property
    def program_bytes(self) -> bytes:
        return isa.to_bytes(self.program)


VIEWS = ("flatten", "view")     # layers that move no data: their layout is a view of their input's


def _owners(qmodel: QModel) -> tuple[dict[str, str], dict[str, int]]:
    """The tensor whose memory each tensor is (a view's is its source's), and the index
    of the last layer that reads each memory."""
    owner = {"input": "input"}
    last = {}
    for k, layer in enumerate(qmodel.layers):
        for src in layer.sources:
            last[owner[src]] = k
        owner[layer.name] = owner[layer.sources[0]] if layer.kind in VIEWS else layer.name
    return owner, last


def _single_pixel(layer) -> bool:
    """Whether each output pixel reads the input pixel where it lies, and that alone (so
    that images stacked one below the other are one image to the layer)."""
    return layer.window == (1, 1) and layer.stride == (1, 1) and not any(layer.pads)


# How many times the input's bytes its unfolded windows may take (ResNet-8's 3x3 windows
# over a 3-channel image: 4; DS-CNN's 10x4 windows at stride 2 over one channel: 1.3).
UNFOLD_GROWTH = 4


def _unfolding(qmodel: QModel, cfg: HwConfig):
    """(Unfold, the conv as a 1x1 conv over it) when one dense conv alone reads the model's
    input, which has fewer channels than a block (a 1- or 3-channel image), and its
    windows, stored as pixels of C*kh*kw channels, take fewer channel blocks than its
    taps over the input's padded channels do (fewer weight tiles stored and streamed)
    and at most UNFOLD_GROWTH times the input's bytes (overlapping windows repeat it);
    else None."""
    readers = [layer for layer in qmodel.layers if "input" in layer.sources]
    if len(readers) != 1 or readers[0].kind != "conv" or readers[0].groups != 1:
        return None
    conv = readers[0]
    (c, h, w), (kh, kw) = qmodel.input_shape, conv.window
    cout, oh, ow = conv.out_shape
    unfolded = padded_channels(c * kh * kw, cfg)
    if (c >= cfg.channel_block or unfolded >= padded_channels(c, cfg) * kh * kw
            or oh * ow * unfolded > UNFOLD_GROWTH * h * w * padded_channels(c, cfg)):
        return None
    top, _, left, _ = conv.pads
    unfold = Unfold(c, h, w, kh, kw, *conv.stride, top, left, oh, ow)
    return unfold, dataclasses.replace(conv, weight=conv.weight.reshape(cout, c * kh * kw, 1, 1),
                                       in_shape=(c * kh * kw, oh, ow), stride=1, padding=0)


def _lower(layer, srcs: list[TensorLayout], dst: TensorLayout, cfg: HwConfig, image: Image,
           emit: Emitter) -> int:
    """Lower `layer` for the batch: once over its images stacked where its windows are
    single pixels, else image by image (the lowerings take the batch's layouts). The
    real MACs of the batch."""
    lower = LOWERINGS[layer.kind]
    if dst.batch == 1 or not _single_pixel(layer):
        return lower(layer, srcs, dst, cfg, image, emit)
    (ci, h, w), (co, oh, ow) = layer.in_shape, layer.out_shape
    tall = dataclasses.replace(layer, in_shape=(ci, h * dst.batch, w), out_shape=(co, oh * dst.batch, ow))
    return lower(tall, [t.stacked() for t in srcs], dst.stacked(), cfg, image, emit)


def compile_model(qmodel: QModel, cfg: HwConfig, reuse_activations: bool = False,
                  batch: int = 1) -> Compiled:
    """`reuse_activations`: a tensor's DRAM is given to later activations once its last
    reader is lowered (liveness), so only the input and the output survive the run: the
    layouts then hold just those two, and per-layer checks of the run are not possible.
    `batch`: the inputs one run of the program takes."""
    if batch < 1:
        raise HwqError(f"batch {batch}: a program runs at least one input")
    memmap = MemoryMap(cfg, batch)
    image = Image(memmap)
    emit = Emitter(cfg)
    # an input that only flattens read is stored flat, its channels not padded pixel by pixel
    flat = all(layer.kind == "flatten" for layer in qmodel.layers if "input" in layer.sources)
    c, h, w = qmodel.input_shape
    first = _unfolding(qmodel, cfg)
    if first is not None:
        unfold, first = first
        layouts = {"input": memmap.activation("input", "input", first.in_shape)}
        layouts["input"].unfold = unfold
    else:
        layouts = {"input": memmap.activation("input", "input", (c * h * w, 1, 1) if flat else (c, h, w))}
    macs = {}
    last = qmodel.layers[-1].name
    owner, last_uses = _owners(qmodel)
    keep = {"input", owner[last]}
    dies_after = {}
    for name, k in last_uses.items():
        dies_after.setdefault(k, []).append(name)
    dead = set()
    for index, layer in enumerate(qmodel.layers):
        emit.layer = layer.name
        if first is not None and layer.name == first.name:
            layer = first
        srcs = [layouts[s] for s in layer.sources]
        if layer.kind == "flatten":
            layouts[layer.name] = flatten_view(srcs[0])
            continue
        if layer.kind == "view":
            layouts[layer.name] = channel_view(srcs[0], layer.channels)
            continue
        if layer.kind not in LOWERINGS:
            raise HwqError(f"layer '{layer.name}': no lowering for kind '{layer.kind}'")
        kind = "output" if layer.name == last else "activation"
        c, h, w = layer.out_shape
        if layer.kind == "concat":
            dst = memmap.concatenation(layer.name, kind, [t.channel_index.size for t in srcs], h, w)
        else:
            dst = memmap.activation(layer.name, kind, layer.out_shape,
                                    like=srcs[0] if layer.kind == "maxpool" else None)
        dst.unsigned = layer.unsigned
        layouts[layer.name] = dst
        macs[layer.name] = _lower(layer, srcs, dst, cfg, image, emit)
        if reuse_activations:
            for name in dies_after.get(index, []):
                if name not in keep:
                    memmap.release(layouts[name].region)
                    dead.add(name)
    if reuse_activations:   # views of dead tensors die with them
        layouts = {n: t for n, t in layouts.items()
                   if n in ("input", last) or t.region.name not in dead}
    emit.layer = "end"
    emit("END")
    program = isa.to_bytes(emit.program)
    code = memmap.allocate("program", "program", len(program))
    data = image.assemble(memmap.next_word)
    data[code.word * cfg.bus_bytes:] = program
    return Compiled(cfg, emit.program, emit.notes, emit.layer_of, bytes(data), memmap, layouts,
                    code.word, macs, batch)
