"""The host protocol between the host driver (hwq/board/host.py) and the SoC on a board
(hwq/rtl/soc.py): one set of constants both sides read, importable without Amaranth.

Host protocol (8N1 UART; every integer little-endian). The host sends a command byte
and its arguments; the SoC answers as listed. Memory is addressed in DRAM words of
`bus_bytes` bytes, the accelerator's own addressing (addresses wrap at `dram_words`).

    'I'                        -> 'H' 'W' 'Q' PROTOCOL_VERSION, fingerprint (8 bytes),
                                  bus_bytes (1), log2(dram_words) (1)        (IDENT_BYTES)
    'W' addr:u32 n:u32 data    -> 'K' once the n words (n * bus_bytes bytes) are written
    'R' addr:u32 n:u32         -> the n words (n * bus_bytes bytes)
    'S' pc:u32                 -> 'K'; the accelerator starts at word pc (ignored if busy)
    'Q'                        -> flags (bit 0 done, bit 1 busy), status (1), pc (u32),
                                  cycles (u64), macs (u64)                  (STATUS_BYTES)
    anything else              -> '?'

The fingerprint is the hardware config's (hwq/arch/config.py), so the host can refuse a
package compiled for other hardware than the bitstream's.
"""
from __future__ import annotations

from hwq.arch.config import HwConfig

PROTOCOL_VERSION = 1
CMD_IDENT, CMD_WRITE, CMD_READ, CMD_START, CMD_STATUS = b"I", b"W", b"R", b"S", b"Q"
ACK, NAK = b"K", b"?"
IDENT_MAGIC = b"HWQ"
IDENT_BYTES = 3 + 1 + 8 + 1 + 1
STATUS_BYTES = 1 + 1 + 4 + 8 + 8
# the argument bytes after each command byte
ARG_BYTES = {CMD_WRITE: 8, CMD_READ: 8, CMD_START: 4, CMD_STATUS: 0, CMD_IDENT: 0}


def ident_bytes(cfg: HwConfig) -> bytes:
    """What 'I' answers for `cfg` (the host compares it with a package's)."""
    return (IDENT_MAGIC + bytes([PROTOCOL_VERSION]) + bytes.fromhex(cfg.fingerprint)
            + bytes([cfg.bus_bytes, cfg.dram_words.bit_length() - 1]))
