"""Post-processing: accumulator + bias, LeakyReLU slope, shift with rounding, clamp to int8
or uint8.

Implements hwq.arch.requant.requantize (DESIGN.md rule 2) lane by lane; the
tests hold `RequantLanes` to that function, exhaustively on a narrow accumulator.

The slope step (requant.apply_slope) always runs: v = x * (slope if x < 0 else 256)
shifted by s + 8, which for slope 256 is the plain x shifted by s -- one datapath, no
mode. v has acc_bits + 9 bits. Without it (`slope=False`, hardware configs with
`leaky_relu: false`) the lanes shift x by s and have one stage less.

Right shift s in 1..39: floor = x >> s (arithmetic), and the rounding looks at the
round bit b = bit s-1 of x and the sticky bit t = (bits s-2..0 of x) != 0 (one log
shifter by s - 1 gives b, floor and, OR-ing what each stage drops, t):
    half_up   up = b              (rem >= half)
    half_down up = b & t          (rem >  half)
    half_even up = b & (t | floor[0])
    std_round up = b & (t | x >= 0)
The result is computed as a 9-bit value, which holds both an int8 and a uint8 output:
sat9 saturates to [-256, 255]. Left shift by -s (s <= 0, up to 32): the int64 value
x << -s is clamped to [lo, hi] within 9 bits, and sat9(x << n) == sat9(sat9(x) << min(n, 9)),
so only a 9-bit value is shifted. Clamp: clip(v, lo, hi) == clip(sat9(v), lo, hi) for 9-bit
lo, hi (np.clip: max then min); obuf takes the low byte.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwq.arch import isa
from hwq.arch.requant import ALPHA_BITS, ROUND_MODES
from hwq.rtl.decode import args_layout
from hwq.rtl.mul import Multiplier
from hwq.rtl.pe import ACC_BITS
from hwq.rtl.ports import SramRead, SramWrite, held_args, unit_members
from hwq.arch.timing import MUL_LATENCY, lane_regs, read_regs

_POST = {f.name: f for f in isa.BY_NAME["POST"].fields}
SHIFT_BITS = _POST["shift"].bits
ROUND_BITS = _POST["round"].bits
CLAMP_BITS = _POST["lo"].bits
SLOPE_BITS = _POST["slope"].bits
# the result's width: an int8 or a uint8 output, and the clamp bounds, fit 9 signed bits
V_BITS = CLAMP_BITS
V_MIN, V_MAX = -(1 << (V_BITS - 1)), (1 << (V_BITS - 1)) - 1


def _fits(v):
    """Whether signed v fits V_BITS: its bits from V_BITS - 1 up are all copies of the
    sign (a few LUTs, where comparing with the bounds takes two carry chains)."""
    top = v[V_BITS - 1:]
    return (top == 0) | (top == (1 << len(top)) - 1)


def _sat(m, v, name):
    """v saturated to V_BITS."""
    out = Signal(signed(V_BITS), name=name)
    m.d.comb += out.eq(Mux(_fits(v), v[:V_BITS], Mux(v[-1], V_MIN, V_MAX)))
    return out


class RequantLanes(wiring.Component):
    """`lanes` requantizers, a shift each, sharing round/lo/hi/slope, pipelined `latency`
    cycles:

    y[k] = requantize(wrap(acc[k] + bias[k], acc_bits), shift[k], round, lo, hi, slope) & 0xff

    of the acc/bias presented `latency` cycles earlier (shift, round, lo, hi, slope held).
    Stage 1 registers x = acc + bias; with the slope, 1 + MUL_LATENCY stages compute its
    product v on multipliers with registered operands and product (after the adder, or
    with the sum of its partial products, it was the longest path); the next stage the
    shifted value's low 9 bits, whether it fits them and the rounding decision (a left
    shift is done and saturated there: it does not round); the output rounds and clamps
    with 9-bit arithmetic only -- the whole path in one cycle ran the iCE40 at ~10 MHz. `deep` (the ECP5 builds,
    hwq.arch.timing.lane_regs) adds a stage for each path that was in turn the longest
    on the ECP5-85F: one registers the log shifter halfway, one its result before the
    rounding decision, one the rounded value before the clamp.
    """

    def __init__(self, lanes: int, acc_bits: int = ACC_BITS, slope: bool = True,
                 deep: bool = False):
        self.lanes, self.acc_bits, self.has_slope = lanes, acc_bits, slope
        self.deep = deep
        self.latency = 2 + slope * (1 + MUL_LATENCY) + 3 * deep
        super().__init__({
            "acc": In(data.ArrayLayout(signed(acc_bits), lanes)),
            "bias": In(data.ArrayLayout(signed(acc_bits), lanes)),
            "shift": In(data.ArrayLayout(signed(SHIFT_BITS), lanes)),
            "round": In(unsigned(ROUND_BITS)),
            "slope": In(unsigned(SLOPE_BITS)),
            "lo": In(signed(CLAMP_BITS)),
            "hi": In(signed(CLAMP_BITS)),
            "y": Out(data.ArrayLayout(signed(8), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.acc_bits
        # x * slope: |x| <= 2**(W-1), slope < 2**SLOPE_BITS; right shifts up to 31 + 8
        V, stages = (W + SLOPE_BITS, SHIFT_BITS) if self.has_slope else (W, SHIFT_BITS - 1)
        mode = self.round
        # registered: lo and hi are held from the first acc on, and the clamp is at
        # least a cycle later
        clamp_hi = Signal()
        m.d.sync += clamp_hi.eq(self.lo > self.hi)
        for k in range(self.lanes):
            # ---- the lane's shift (after the slope: s + 8, registered; it is held) ----
            if self.has_slope:
                s = Signal(signed(SHIFT_BITS + 1), name=f"s{k}")        # -24..39
                m.d.sync += s.eq(self.shift[k] + ALPHA_BITS)
            else:
                s = self.shift[k]
            right = Signal(name=f"right{k}")
            ls = Signal(range(V_BITS + 1), name=f"ls{k}")               # left shift, capped at 9
            # `deep`: registered too (held like rs1 below); the compare and cap ran on into
            # the left shift, the ECP5-85F's longest path
            held = m.d.sync if self.deep else m.d.comb
            held += [right.eq(s > 0), ls.eq(Mux(-s > V_BITS, V_BITS, -s))]
            # the right shift - 1, registered: the shift is held from the first acc on, and
            # the shifter reads it a cycle later at the earliest, so this costs no cycle;
            # the subtract at the head of the shifter was on the iCE40's longest path
            rs1 = Signal(range(1 << stages), name=f"rs1_{k}")
            m.d.sync += rs1.eq(s[:stages] - 1)
            # ---- stage 1: the sum ----
            x = Signal(signed(W), name=f"x{k}")
            m.d.sync += x.eq((self.acc[k] + self.bias[k])[:W])
            # ---- the slope ----
            if self.has_slope:
                # x * slope on multipliers with registered operands and product (mul.py),
                # a wide x as two partial products (its low 17 bits and the rest: a DSP
                # block's operands are signed 18-bit), then their sum, or x << ALPHA_BITS
                # by the sign: in one cycle, routed into and out of the DSP blocks with
                # the sum, it was the ECP5-85F's longest path
                parts = [x] if W <= 18 else [x[:17], x[17:].as_signed()]
                products = []
                for n, operand in enumerate(parts):
                    mul = Multiplier(operand.shape(), self.slope.shape())
                    m.submodules[f"slope{k}_{n}"] = mul
                    m.d.comb += [mul.a.eq(operand), mul.b.eq(self.slope)]
                    products.append(mul.p)
                prod = products[0] if len(products) == 1 else (products[1] << 17) + products[0]
                x_d = x                     # x beside the products
                for n in range(MUL_LATENCY):
                    (x_d,) = self._stage(m, k, **{f"x_d{n}_": x_d})
                v = Signal(signed(V), name=f"v{k}")
                m.d.sync += v.eq(Mux(x_d[-1], prod, x_d << ALPHA_BITS))
                x = v
            # ---- shift, round decision, 9-bit fit ----
            # t = x >> (s - 1) by a log shifter that ORs the bits each stage drops: they
            # are bits s-2..0 of x, the sticky bit; t[0] is the round bit, t >> 1 the floor
            t, sticky = x, Signal(name=f"sticky{k}")
            dropped = []
            nonneg = x >= 0
            # a left shift does not round: sat9(x << n) == sat9(sat9(x) << n) is final here
            x9 = _sat(m, x, f"x9_{k}")
            for b in range(stages):
                if self.deep and b == stages // 2:
                    # `deep`: half the shifter, the saturation and the sticky bit so far
                    # registered (the whole shifter and its OR in one cycle were a path
                    # of 14 ns on the ECP5-85F)
                    part = Signal(name=f"dropped{k}")
                    m.d.comb += part.eq(Cat(*dropped).any())
                    t, part, nonneg, x9 = self._stage(m, k, half=t, dropped=part,
                                                      nonneg=nonneg, x9=x9)
                    dropped = [part]
                step = Signal(signed(V), name=f"t{k}_{b}")
                m.d.comb += step.eq(Mux(rs1[b], t >> (1 << b), t))
                dropped.append(rs1[b] & (t[:min(1 << b, V)] != 0))
                t = step
            m.d.comb += sticky.eq(Cat(*dropped).any())
            shl = Signal(signed(2 * V_BITS), name=f"shl{k}")
            m.d.comb += shl.eq(x9 << ls)
            if self.deep:
                t, sticky, nonneg, shl = self._stage(m, k, t=t, sticky=sticky, nonneg=nonneg,
                                                     shl=shl)
            floor = Signal(signed(V), name=f"floor{k}")
            rbit = Signal(name=f"rbit{k}")
            up = Signal(name=f"up{k}")
            m.d.comb += [
                floor.eq(t >> 1),
                rbit.eq(t[0]),
            ]
            with m.Switch(mode):
                for name, value in self.round_up(rbit, sticky, floor[0], nonneg).items():
                    with m.Case(ROUND_MODES[name]):
                        m.d.comb += up.eq(value)
            # the right-shift result floor + up, or the left-shifted sat9(x), as a 9-bit
            # candidate `v` (low bits), whether it fits, and its sign if it does not
            v = Signal(signed(V_BITS), name=f"v{k}")
            v_up = Signal(name=f"v_up{k}")
            v_fits = Signal(name=f"v_fits{k}")
            v_neg = Signal(name=f"v_neg{k}")
            with m.If(right):
                m.d.sync += [v.eq(floor[:V_BITS]), v_up.eq(up), v_fits.eq(_fits(floor)),
                             v_neg.eq(floor[-1])]
            with m.Else():
                m.d.sync += [v.eq(_sat(m, shl, f"x9s_{k}")), v_up.eq(0), v_fits.eq(1),
                             v_neg.eq(shl[-1])]
            # ---- output: round (a fitting floor is <= V_MAX, so +1 overflows only
            # there), clamp, the low byte ----
            v9 = Signal(signed(V_BITS), name=f"rounded{k}")
            m.d.comb += v9.eq(Mux(v_fits,
                                  Mux(v_up & (v == V_MAX), V_MAX, v + v_up),
                                  Mux(v_neg, V_MIN, V_MAX)))
            if self.deep:
                (v9,) = self._stage(m, k, rounded=v9)
            # np.clip(v, lo, hi) = min(max(v, lo), hi): hi where v > hi or lo > hi, else
            # lo where v < lo (both compares side by side, not one after the other)
            m.d.comb += self.y[k].eq(Mux((v9 > self.hi) | clamp_hi, self.hi,
                                         Mux(v9 < self.lo, self.lo, v9))[:8])
        return m

    @staticmethod
    def round_up(rbit, sticky, odd, nonneg) -> dict:
        """Whether each rounding mode (by name) adds one to the floor, from the round bit,
        the sticky bit, the floor's low bit and the value's sign (the module doc)."""
        return {"half_up": rbit,
                "half_down": rbit & sticky,
                "half_even": rbit & (sticky | odd),
                "std_round": rbit & (sticky | nonneg)}

    @staticmethod
    def _stage(m, k, **values):
        """A pipeline register for each of `values` (lane k's), in order."""
        regs = []
        for name, v in values.items():
            r = Signal.like(v, name=f"{name}{k}_r")
            m.d.sync += r.eq(v)
            regs.append(r)
        return regs


class PostUnit(wiring.Component):
    """POST: obuf[out + j] = requantize(abuf[acc + j] + bbuf[bias], slope) for j < n, lane
    c shifted by shift (+ bbuf[bias + 1][c] with lane_shifts, modulo 64).

    Timeline (cycle 0 = start, L = the lanes' latency): cycle 0 reads bbuf[bias] --
    with lane_shifts bbuf[bias + 1], the lanes' shift offsets, and cycle 1 bbuf[bias] --
    the bias then held on the read port for the whole instruction; cycle 1 registers
    each lane's shift; cycles 1..n read abuf[acc + j]; each result is registered and
    written to obuf 2 + L + o cycles later; done in cycle n + 2 + L + o (with the last
    write; n = 0 too). o = hwq.arch.timing.read_regs: 1 where the read data is
    registered before the lanes.
    """
    Lanes = RequantLanes        # the requantizers (hwq/rtl/faults.py replaces them)

    def __init__(self, cfg):
        self.cfg = cfg
        A, C = isa.SRAM_ADDR_BITS, cfg.cols
        super().__init__({
            **unit_members(args_layout("POST")),
            "abuf": Out(SramRead(A, ACC_BITS * C)),
            "bbuf": Out(SramRead(A, ACC_BITS * C)),
            "obuf": Out(SramWrite(A, 8 * C)),
        })

    def elaborate(self, platform):
        m = Module()
        a0, a, C = self.args, held_args(m, self, self.cfg), self.cfg.cols
        m.submodules.lanes = lanes = self.Lanes(C, ACC_BITS, self.cfg.leaky_relu,
                                                deep=bool(lane_regs(self.cfg)))
        # abuf read, the lanes, and a register on their output: the round and clamp would
        # otherwise run on into obuf's write port in the same cycle
        L = 1 + lanes.latency + 1
        # ---- with overlap, a register on abuf's and bbuf's read data (cycles.py,
        # read_regs): the block RAMs' outputs would otherwise run straight into the
        # lanes' 32-bit adders. One cycle more per POST; left out of the nearly full
        # small FPGAs (overlap off), where it would cost 64 flip-flops a lane.
        acc_in, bias_in = self.abuf.data, self.bbuf.data
        if read_regs(self.cfg):
            acc_in, bias_in = Signal.like(self.abuf.data), Signal.like(self.bbuf.data)
            m.d.sync += [acc_in.eq(self.abuf.data), bias_in.eq(self.bbuf.data)]
            L += 1
        # ----
        j = Signal.like(a.n)
        aptr = Signal(isa.SRAM_ADDR_BITS)
        optr = Signal(isa.SRAM_ADDR_BITS)
        # the write's valid and address, L cycles behind the read
        valid = [Signal(name=f"s_valid{k}") for k in range(L)]
        dst = [Signal(isa.SRAM_ADDR_BITS, name=f"s_out{k}") for k in range(L)]
        issue = Signal()
        y = Signal.like(lanes.y)
        # each lane's shift: shift + the low SHIFT_BITS bits of its offset, modulo
        # 2**SHIFT_BITS, registered in cycle 1 + o (o = 1 with read registers: from the
        # registered read data, as the add after bbuf's output ran on from a block RAM's
        # clock-to-output). In time: the lanes register shift - 1 from cycle 2 + o for the
        # first result's shift stage in cycle 3 + o (after the slope, later still).
        shifts = Signal(data.ArrayLayout(signed(SHIFT_BITS), C), name="lane_shift")
        first_run = Signal()            # cycle 1
        take_shifts, offsets_in = first_run, self.bbuf.data
        if read_regs(self.cfg):
            take_shifts, offsets_in = Signal(), bias_in
            m.d.sync += take_shifts.eq(first_run)
        offsets = [Mux(a.lane_shifts, offsets_in[k * ACC_BITS:k * ACC_BITS + SHIFT_BITS], 0)
                   for k in range(C)]
        with m.If(take_shifts):
            m.d.sync += [shifts[k].eq(a.shift + offsets[k]) for k in range(C)]
        m.d.sync += [valid[0].eq(issue), dst[0].eq(optr), y.eq(lanes.y)]
        m.d.sync += [valid[k].eq(valid[k - 1]) for k in range(1, L)]
        m.d.sync += [dst[k].eq(dst[k - 1]) for k in range(1, L)]
        m.d.comb += [
            lanes.acc.eq(acc_in), lanes.bias.eq(bias_in),
            lanes.shift.eq(shifts), lanes.round.eq(a.round), lanes.lo.eq(a.lo),
            lanes.hi.eq(a.hi), lanes.slope.eq(a.slope),
            self.obuf.en.eq(valid[-1]), self.obuf.addr.eq(dst[-1]), self.obuf.data.eq(y),
        ]
        drain = Signal(range(L + 1))
        first_bias = a0.bias + a0.lane_shifts
        if read_regs(self.cfg):
            baddr = Signal(isa.SRAM_ADDR_BITS)
            m.d.sync += baddr.eq(first_bias)        # in every cycle, busy or not
            first_bias = baddr
        with m.FSM(name="post") as fsm:
            with m.State("IDLE"):
                # the first bbuf read's address does not wait for the start (which comes
                # at the end of the dispatch logic); with read registers neither does its
                # enable -- bbuf is read in every idle cycle (only POST reads it), the
                # start's read among them: from the start, the dispatch decision ran on
                # into the block RAMs' enables -- and its address is registered, from the
                # fields of the cycle before (the top holds an instruction through its
                # check, CHECK_CYCLES cycles before any start): the add ran on into them
                m.d.comb += [self.bbuf.addr.eq(first_bias),
                             self.bbuf.en.eq(1 if read_regs(self.cfg) else self.start)]
                # the counters start over in every idle cycle: kept out of their enables
                m.d.sync += [j.eq(0), aptr.eq(a0.acc), optr.eq(a0.out), drain.eq(L - 1)]
                with m.If(self.start):
                    with m.If(a0.n == 0):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.abuf.en.eq(1), self.abuf.addr.eq(aptr), issue.eq(1)]
                m.d.sync += [aptr.eq(aptr + 1), optr.eq(optr + 1), j.eq(j + 1)]
                with m.If(j == 0):
                    m.d.comb += [first_run.eq(1), self.bbuf.en.eq(a.lane_shifts),
                                 self.bbuf.addr.eq(a.bias)]
                with m.If(j == a.n - 1):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
