"""Where tensors live in DRAM, and how their bytes are arranged.

An activation is stored pixel-major: (H, W, Cs) bytes, int8 or uint8 (`unsigned`), with the channels padded to
Cs = a multiple of the config's channel block, so one pixel splits into whole
`rows`-wide input loads and whole `cols`-wide output stores. A flattened tensor is the
same bytes read as one pixel of H*W*Cs channels, a channel view (chunk, split, shuffle)
the same bytes with some of the channels in another order, and a channel concatenation
pads each of its parts to whole blocks; `channel_index` records where each logical
(torch-order) channel sits, so the next layer's weights are permuted to match instead of
moving any data. The model's input, when only flattens read it, is stored flat: one
pixel of C*H*W channels in torch's order; when one conv over fewer channels than a block
reads it, unfolded (`Unfold`): each of the conv's windows is a pixel whose channels are
the window's C*kh*kw values, so that the conv is a 1x1 conv over whole channel blocks
(the host, which writes the input, unfolds it).

A package compiled for a batch of N inputs stores every tensor N times, image after
image, so that N images of a pixel-major tensor are one tensor N times as tall: a layer
whose windows are single pixels (a Linear, a 1x1 conv, an add) runs once over all of
them, streaming N vectors per weight tile.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hwq.arch.config import HwConfig
from hwq.errors import HwqError


@dataclass(frozen=True)
class Region:
    name: str
    kind: str        # weights | bias | activation | input | output | program
    word: int        # first DRAM word
    words: int

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "word": self.word, "words": self.words}


@dataclass(frozen=True)
class Unfold:
    """An input stored as the windows of the conv that reads it: pixel (oy, ox) holds the
    window of output pixel (oy, ox), its channels in torch's (c, ky, kx) order; the
    zero padding the windows read is in the bytes."""
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    top: int
    left: int
    out_h: int
    out_w: int

    def _padded(self) -> tuple[int, int]:
        return (max(self.top + self.h, (self.out_h - 1) * self.sh + self.kh),
                max(self.left + self.w, (self.out_w - 1) * self.sw + self.kw))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (N, C*kh*kw, out_h, out_w): the windows."""
        hp, wp = self._padded()
        xp = np.zeros((len(x), self.c, hp, wp), x.dtype)
        xp[:, :, self.top:self.top + self.h, self.left:self.left + self.w] = x
        win = np.lib.stride_tricks.sliding_window_view(xp, (self.kh, self.kw), axis=(2, 3))
        win = win[:, :, ::self.sh, ::self.sw][:, :, :self.out_h, :self.out_w]   # N C OH OW kh kw
        return win.transpose(0, 1, 4, 5, 2, 3).reshape(len(x), -1, self.out_h, self.out_w)

    def invert(self, u: np.ndarray) -> np.ndarray:
        """The windows back to (N, C, H, W); an input value no window reads is 0."""
        hp, wp = self._padded()
        xp = np.zeros((len(u), self.c, hp, wp), u.dtype)
        u = u.reshape(len(u), self.c, self.kh, self.kw, self.out_h, self.out_w)
        for ky in range(self.kh):
            for kx in range(self.kw):
                xp[:, :, ky:ky + (self.out_h - 1) * self.sh + 1:self.sh,
                   kx:kx + (self.out_w - 1) * self.sw + 1:self.sw] = u[:, :, ky, kx]
        return xp[:, :, self.top:self.top + self.h, self.left:self.left + self.w]


@dataclass
class TensorLayout:
    region: Region
    h: int
    w: int
    stored_channels: int          # Cs: bytes per pixel
    channel_index: np.ndarray     # logical channel -> byte offset within the pixel
    unsigned: bool = False        # the bytes are uint8 codes, not int8 ones
    batch: int = 1                # images stored one after the other
    unfold: Unfold | None = None  # the model's input, stored as a conv's windows

    @property
    def dtype(self):
        return np.uint8 if self.unsigned else np.int8

    def pixel_words(self, cfg: HwConfig) -> int:
        return self.stored_channels // cfg.bus_bytes

    def pack(self, x: np.ndarray) -> bytes:
        """(N, C, H, W) int8 or uint8, N <= batch -> the stored bytes of all `batch`
        images, the ones x leaves out zero (a flat layout, one pixel of C*H*W channels,
        takes the tensor in torch's flatten order)."""
        n = x.shape[0]
        assert n <= self.batch, (n, self.batch)
        if self.unfold is not None:
            x = self.unfold.apply(x)
        out = np.zeros((self.batch, self.image_bytes), self.dtype)
        pixels = x.reshape(n, -1, self.h * self.w).transpose(0, 2, 1)   # (N, HW, C)
        out[:n].reshape(n, self.h * self.w, -1)[:, :, self.channel_index] = pixels
        return out.tobytes()

    def unpack(self, blob: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """Inverse of pack: the stored bytes of the batch -> (batch, C, H, W) int8 or uint8."""
        raw = np.frombuffer(blob, self.dtype).reshape(self.batch, self.h * self.w, self.stored_channels)
        values = raw[:, :, self.channel_index].transpose(0, 2, 1)
        if self.unfold is not None:
            return self.unfold.invert(values.reshape(self.batch, -1, self.h, self.w))
        return values.reshape(self.batch, *shape)

    @property
    def image_bytes(self) -> int:
        return self.h * self.w * self.stored_channels

    @property
    def nbytes(self) -> int:
        """The bytes of the whole batch."""
        return self.image_bytes * self.batch

    def image(self, n: int, cfg: HwConfig) -> "TensorLayout":
        """Image n of the batch alone."""
        words = self.image_bytes // cfg.bus_bytes
        region = Region(self.region.name, self.region.kind, self.region.word + n * words, words)
        return TensorLayout(region, self.h, self.w, self.stored_channels, self.channel_index,
                            self.unsigned)

    def stacked(self) -> "TensorLayout":
        """The batch as one image, its images one below the other (the same bytes)."""
        return TensorLayout(self.region, self.h * self.batch, self.w, self.stored_channels,
                            self.channel_index, self.unsigned)

    def to_dict(self) -> dict:
        index = self.channel_index
        identity = np.array_equal(index, np.arange(index.size))
        return {"region": self.region.to_dict(), "h": self.h, "w": self.w,
                "stored_channels": self.stored_channels,
                "channels": int(index.size) if identity else index.tolist(),
                **({"unsigned": True} if self.unsigned else {}),
                **({"batch": self.batch} if self.batch > 1 else {}),
                **({"unfold": dataclasses.asdict(self.unfold)} if self.unfold else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorLayout":
        ch = d["channels"]
        index = np.arange(ch) if isinstance(ch, int) else np.asarray(ch, np.int64)
        unfold = Unfold(**d["unfold"]) if "unfold" in d else None
        return cls(Region(**d["region"]), d["h"], d["w"], d["stored_channels"], index,
                   d.get("unsigned", False), d.get("batch", 1), unfold)


def padded_channels(c: int, cfg: HwConfig) -> int:
    b = cfg.channel_block
    return -(-c // b) * b


@dataclass
class MemoryMap:
    """Allocator over DRAM words: a bump pointer, and the extents of released activations
    (dead tensors, compile_model's liveness reuse), which later activations take first fit.
    Activations hold `batch` images each."""

    cfg: HwConfig
    batch: int = 1
    regions: list[Region] = field(default_factory=list)
    next_word: int = 0
    free: list[tuple[int, int]] = field(default_factory=list)   # (first word, words)

    def release(self, region: Region) -> None:
        """Give a dead activation's words back; neighbouring free extents merge."""
        spans = sorted(self.free + [(region.word, region.words)])
        merged = [spans[0]]
        for word, words in spans[1:]:
            last_word, last_words = merged[-1]
            if last_word + last_words == word:
                merged[-1] = (last_word, last_words + words)
            else:
                merged.append((word, words))
        self.free = merged

    def _reuse(self, words: int) -> int | None:
        for k, (word, size) in enumerate(self.free):
            if size >= words:
                self.free[k] = (word + words, size - words)
                if size == words:
                    del self.free[k]
                return word
        return None

    def allocate(self, name: str, kind: str, n_bytes: int) -> Region:
        words = -(-n_bytes // self.cfg.bus_bytes)
        reused = self._reuse(words) if kind in ("activation", "output") else None
        if reused is not None:
            region = Region(name, kind, reused, words)
            self.regions.append(region)
            return region
        region = Region(name, kind, self.next_word, words)
        self.next_word += words
        if self.next_word > self.cfg.dram_words:
            fewer = f" or a batch smaller than {self.batch}" if self.batch > 1 else ""
            raise HwqError(f"the model needs more than dram_words={self.cfg.dram_words} words of "
                           f"DRAM (at '{name}'); use a hardware config with a larger dram_words{fewer}")
        self.regions.append(region)
        return region

    def activation(self, name: str, kind: str, shape: tuple[int, int, int],
                   like: TensorLayout | None = None) -> TensorLayout:
        """A tensor of `shape`, its channels padded as one run -- or arranged `like` another
        tensor's (max-pool keeps its input's arrangement)."""
        c, h, w = shape
        n = self.batch
        if like is not None:
            region = self.allocate(name, kind, n * h * w * like.stored_channels)
            return TensorLayout(region, h, w, like.stored_channels, like.channel_index.copy(), batch=n)
        cs = padded_channels(c, self.cfg)
        region = self.allocate(name, kind, n * h * w * cs)
        return TensorLayout(region, h, w, cs, np.arange(c), batch=n)

    def concatenation(self, name: str, kind: str, channels: list[int], h: int, w: int) -> TensorLayout:
        """A channel concatenation whose every part starts a channel block of its own (its
        channels padded as a run), so that each part is written as whole output blocks;
        channel_index maps torch's channel order onto them."""
        runs = [padded_channels(c, self.cfg) for c in channels]
        starts = np.cumsum([0] + runs[:-1])
        index = np.concatenate([np.arange(c) + s for c, s in zip(channels, starts)])
        region = self.allocate(name, kind, self.batch * h * w * sum(runs))
        return TensorLayout(region, h, w, sum(runs), index, batch=self.batch)

    def by_name(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)
