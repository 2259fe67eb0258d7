"""The host protocol between the host driver (hwq/board/host.py) and the SoC on a board
(hwq/rtl/soc.py): one set of constants both sides read, importable without Amaranth.

Host protocol (8N1 UART; every integer little-endian but the block checksum). The host
sends a command byte and its arguments; the SoC answers as listed. Memory is addressed in
DRAM words of `bus_bytes` bytes, the accelerator's own addressing (addresses wrap at
`dram_words`).

    'I'                        -> 'H' 'W' 'Q' PROTOCOL_VERSION, fingerprint (8 bytes),
                                  bus_bytes (1), log2(dram_words) (1)        (IDENT_BYTES)
    'B' addr:u32 n:u16 data crc:u16
                               -> 'K' once the first n words of the block are written
                                  from word addr, '?' if the checksum fails (nothing is
                                  written)                                   (BLOCK_FRAME)
    'R' addr:u32 n:u32         -> the n words (n * bus_bytes bytes)
    'S' pc:u32                 -> 'K'; the accelerator starts at word pc (ignored if busy)
    'Q'                        -> flags (bit 0 done, bit 1 busy), status (1), pc (u32),
                                  cycles (u64), macs (u64)                  (STATUS_BYTES)
    anything else              -> '?'

A block write ('B') always carries BLOCK_BYTES of data (n, at most BLOCK_BYTES / bus_bytes,
says how many words of it to write; the rest is padding), so its frame has one length
whatever its bytes say. `crc` is CRC-16/IBM-3740 (polynomial 0x1021, initial value
0xFFFF; `crc16`) of the frame from its 'B' to its last data byte, sent most significant
byte first: the CRC's own bit order, so the SoC's CRC over the whole frame is 0 when it
arrived intact. The SoC collects the block in a staging buffer and writes DRAM only from
a block whose checksum holds: a corrupted block leaves memory as it was, and the host
sends it again. Frames are independent, so the host streams several before it reads
their answers (one byte each, in order).

The fingerprint is the hardware config's (hwq/arch/config.py), so the host can refuse a
package compiled for other hardware than the bitstream's.
"""
from __future__ import annotations

import binascii

from hwq.arch.config import HwConfig

PROTOCOL_VERSION = 2
CMD_IDENT, CMD_BLOCK, CMD_READ, CMD_START, CMD_STATUS = b"I", b"B", b"R", b"S", b"Q"
ACK, NAK = b"K", b"?"
IDENT_MAGIC = b"HWQ"
IDENT_BYTES = 3 + 1 + 8 + 1 + 1
STATUS_BYTES = 1 + 1 + 4 + 8 + 8
BLOCK_BYTES = 256
CRC_BYTES = 2
CRC_POLY, CRC_INIT = 0x1021, 0xFFFF        # CRC-16/IBM-3740 (a.k.a. CCITT-FALSE)
# the argument bytes after each command byte
ARG_BYTES = {CMD_BLOCK: 6, CMD_READ: 8, CMD_START: 4, CMD_STATUS: 0, CMD_IDENT: 0}
BLOCK_FRAME = 1 + ARG_BYTES[CMD_BLOCK] + BLOCK_BYTES + CRC_BYTES


def ident_bytes(cfg: HwConfig) -> bytes:
    """What 'I' answers for `cfg` (the host compares it with a package's)."""
    return (IDENT_MAGIC + bytes([PROTOCOL_VERSION]) + bytes.fromhex(cfg.fingerprint)
            + bytes([cfg.bus_bytes, cfg.dram_words.bit_length() - 1]))


def crc16(data: bytes) -> int:
    """CRC-16/IBM-3740 of `data` (binascii's crc_hqx is this CRC)."""
    return binascii.crc_hqx(bytes(data), CRC_INIT)


def block_words(bus_bytes: int) -> int:
    """DRAM words in a block's data."""
    return BLOCK_BYTES // bus_bytes


def block_frame(word: int, data: bytes, bus_bytes: int) -> bytes:
    """The 'B' frame writing `data` (whole words, at most one block) from DRAM word `word`."""
    n = len(data) // bus_bytes
    assert len(data) % bus_bytes == 0 and 0 < n <= block_words(bus_bytes), len(data)
    body = (CMD_BLOCK + word.to_bytes(4, "little") + n.to_bytes(2, "little")
            + bytes(data) + bytes(BLOCK_BYTES - len(data)))
    return body + crc16(body).to_bytes(CRC_BYTES, "big")


def parse_block(frame: bytes, bus_bytes: int) -> tuple[int, bytes] | None:
    """(word, data) of an intact 'B' frame of BLOCK_FRAME bytes, None if its checksum
    fails (what the SoC does with it)."""
    if crc16(frame) != 0:
        return None
    word, n = int.from_bytes(frame[1:5], "little"), int.from_bytes(frame[5:7], "little")
    n = min(n, block_words(bus_bytes))
    return word, bytes(frame[7:7 + n * bus_bytes])


def link_seconds(nbytes: int, baud: int) -> float:
    """Time on the wire for `nbytes` bytes of 8N1 at `baud` (10 bits a byte)."""
    return 10 * nbytes / baud
