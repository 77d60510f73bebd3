"""Does a JPEG's scan data hold exactly what its frame header declares? Checked before any pixel is decoded.

libjpeg reports a scan that ends early ("Corrupt JPEG data: premature end of data segment"), bytes left over
("N extraneous bytes before marker"), a bad Huffman code or a missing restart marker as *warnings*, then fills
the rest of the image with grey and carries on; PIL discards those warnings. So a 77 KB file whose header
says 7000x7000 over a 480x360 scan decodes "fine" into 49 MP of grey, and a header that disagrees with its
scan gives a garbled image. :func:`check_jpeg` walks the segments and decodes every Huffman symbol of the
sequential scans and of the first passes of progressive ones (no dequantisation, no IDCT): a scan must end
exactly after its last MCU (< 8 padding bits), each restart interval likewise, and the file must end with
EOI. Scans that are not walked (progressive AC refinement, arithmetic or lossless coding) are checked for
structure only. The walk is a numba kernel (~20 ms per MB of scan data); where numba cannot load, only the
structure is checked (logged once).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

log = logging.getLogger(__name__)

# status codes of the walk
OK, SHORT, EXTRA, BAD_CODE = 0, 1, 2, 3
PAD = 1024
# modes of a scan
SEQUENTIAL, DC_FIRST, DC_REFINE, AC_FIRST, SKIP = 0, 1, 2, 3, 4
_SOF_WALKED = {0xC0: False, 0xC1: False, 0xC2: True}  # Huffman sequential (baseline, extended), progressive
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic


def corrupt(reason: str) -> InvalidInputError:
    return InvalidInputError(f"corrupt JPEG image: {reason}")


@dataclass
class _Frame:
    width: int
    height: int
    comps: dict  # component id -> (h, v)
    progressive: bool
    walked: bool

    @property
    def hmax(self) -> int:
        return max(h for h, _ in self.comps.values())

    @property
    def vmax(self) -> int:
        return max(v for _, v in self.comps.values())


def _segments(data: bytes):
    """(marker, start of its payload, payload length) for each segment; entropy data is skipped by the caller
    through the position it sends back."""
    if data[:2] != b"\xff\xd8":
        raise corrupt("no start-of-image marker")
    pos, n = 2, len(data)
    while True:
        if pos >= n or data[pos] != 0xFF:
            raise corrupt(f"expected a marker at byte {pos}")
        while pos + 1 < n and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        if pos + 1 >= n:
            raise corrupt("the file ends inside a marker")
        m = data[pos + 1]
        if m == 0xD9 or 0xD0 <= m <= 0xD7 or m == 0x01:  # markers without a payload
            nxt = yield m, pos + 2, 0
            pos = nxt if nxt is not None else pos + 2
            continue
        if pos + 4 > n:
            raise corrupt("the file ends inside a segment header")
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > n:
            raise corrupt(f"segment 0x{m:02X} at byte {pos} runs past the end of the file")
        nxt = yield m, pos + 4, length - 2
        pos = nxt if nxt is not None else pos + 2 + length


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _frame(m: int, seg: bytes) -> _Frame:
    if len(seg) < 6:
        raise corrupt("short frame header")
    h, w, nf = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
    if len(seg) < 6 + 3 * nf or nf == 0:
        raise corrupt("short frame header")
    comps = {}
    for i in range(nf):
        cid, hv = seg[6 + 3 * i], seg[7 + 3 * i]
        if not (1 <= hv >> 4 <= 4 and 1 <= hv & 15 <= 4):
            raise corrupt(f"bad sampling factors 0x{hv:02X}")
        comps[cid] = (hv >> 4, hv & 15)
    if w == 0 or h == 0:
        raise corrupt(f"the frame header declares {w}x{h}")
    return _Frame(w, h, comps, m == 0xC2, m in _SOF_WALKED)


def _huffman_tables(seg: bytes, luts: dict) -> None:
    """DHT payload -> ``luts[(class, id)]``: each table's bytes (checked; looked up by :func:`_stacked`)."""
    i = 0
    while i < len(seg):
        if i + 17 > len(seg):
            raise corrupt("short Huffman table")
        total = sum(seg[i + 1:i + 17])
        if i + 17 + total > len(seg):
            raise corrupt("short Huffman table")
        table = bytes(seg[i:i + 17 + total])
        _lut(table)  # raises for a bad table
        luts[(seg[i] >> 4, seg[i] & 15)] = table
        i += 17 + total


@functools.lru_cache(maxsize=64)  # most files carry the standard tables of the JPEG spec's annex K
def _lut(table: bytes) -> np.ndarray:
    """One DHT table (class/id byte, 16 counts, symbols) -> its 16-bit lookup table: entry = (bits to skip
    << 8) | symbol, the bits being the code's and the value's after it (a DC symbol is the value's length,
    an AC one's low nibble); 0 for no code, or for a DC length above 16."""
    counts = np.frombuffer(table[1:17], np.uint8)
    values = np.frombuffer(table[17:], np.uint8).astype(np.int32)
    lengths = np.repeat(np.arange(1, 17), counts)
    # Canonical codes fill the 16-bit space from 0 upwards, each code's share 2**(16 - length) wide, as long
    # as no length overflows (Kraft's inequality).
    widths = 1 << (16 - lengths)
    if widths.sum() > 65536:
        raise corrupt("bad Huffman table")
    extra = values if table[0] >> 4 == 0 else values & 15
    entries = np.where(extra <= 16, ((lengths + extra) << 8) | values, 0)
    lut = np.zeros(65536, np.int32)
    lut[:widths.sum()] = np.repeat(entries, widths)
    return lut


@functools.lru_cache(maxsize=16)
def _stacked(tables: tuple[bytes, ...]) -> np.ndarray:
    """The lookup tables of one scan, one row each (read-only: shared between calls)."""
    out = np.stack([_lut(t) for t in tables]) if tables else np.zeros((1, 65536), np.int32)
    out.flags.writeable = False
    return out


def _scan_plan(seg: bytes, frame: _Frame, luts: dict):
    """SOS payload -> (mode, blocks per MCU per component, DC and AC table of each, MCU count, Ss, Se), or
    None when the scan is not walked."""
    ns = seg[0] if seg else 0
    if ns == 0 or len(seg) < 1 + 2 * ns + 3:
        raise corrupt("short scan header")
    ids = [seg[1 + 2 * i] for i in range(ns)]
    tables = [seg[2 + 2 * i] for i in range(ns)]
    ss, se, ah = seg[1 + 2 * ns], seg[2 + 2 * ns], seg[3 + 2 * ns] >> 4
    if any(c not in frame.comps for c in ids):
        raise corrupt("a scan names a component the frame does not have")
    if frame.progressive:
        mode = (DC_FIRST if ah == 0 else DC_REFINE) if ss == 0 else (AC_FIRST if ah == 0 else SKIP)
    else:
        mode = SEQUENTIAL
    if not frame.walked or mode == SKIP or se > 63 or ss > se:
        return None
    dc = [(0, t >> 4) for t in tables]
    ac = [(1, t & 15) for t in tables]
    needed = (dc if mode in (SEQUENTIAL, DC_FIRST) else []) + (ac if mode in (SEQUENTIAL, AC_FIRST) else [])
    if any(t not in luts for t in needed):
        return None  # a table libjpeg may supply itself (motion JPEG): structure only
    if ns == 1:
        h, v = frame.comps[ids[0]]
        bw = _ceil(_ceil(frame.width * h, frame.hmax), 8)  # the component's blocks, without MCU padding
        bh = _ceil(_ceil(frame.height * v, frame.vmax), 8)
        blocks, mcus = [1], bw * bh
    else:
        blocks = [frame.comps[c][0] * frame.comps[c][1] for c in ids]
        mcus = _ceil(frame.width, 8 * frame.hmax) * _ceil(frame.height, 8 * frame.vmax)
    order = sorted({*dc, *ac} & set(luts))
    lut = _stacked(tuple(luts[t] for t in order))
    index = {t: i for i, t in enumerate(order)}
    return (mode, np.array(blocks, np.int64), np.array([index.get(t, 0) for t in dc], np.int64),
            np.array([index.get(t, 0) for t in ac], np.int64), lut, mcus, ss, se)


def check_jpeg(data: bytes) -> None:
    """Raise InvalidInputError ("corrupt JPEG image: <what>") unless ``data`` is a well-formed JPEG whose
    walked scans hold exactly the MCUs its frame header declares. Cheap: no pixel is produced."""
    walk = _kernel()
    buf = np.frombuffer(data, np.uint8)
    frame, luts, restart, seen_scan = None, {}, 0, False
    segments = _segments(data)
    sent = None
    while True:
        m, start, length = segments.send(sent)
        sent, seg = None, data[start:start + length]
        if m == 0xD9:
            if not seen_scan:
                raise corrupt("no scan data")
            return
        if 0xD0 <= m <= 0xD7:
            raise corrupt(f"restart marker RST{m - 0xD0} outside a scan")
        if m in _SOF_WALKED or m in _SOF_OTHER:
            if frame is not None:
                raise corrupt("more than one frame header")
            frame = _frame(m, seg)
        elif m == 0xC4:
            _huffman_tables(seg, luts)
        elif m == 0xDD and len(seg) >= 2:
            restart = int.from_bytes(seg[:2], "big")
        elif m == 0xDA:
            if frame is None:
                raise corrupt("a scan before the frame header")
            seen_scan = True
            sent = _scan(walk, buf, start + length, _scan_plan(seg, frame, luts), restart)


def _scan(walk, buf: np.ndarray, pos: int, plan, restart: int) -> int:
    """Check one scan's entropy-coded data from ``pos``; the position of the marker after it."""
    end = _end_of_scan(buf, pos)
    if plan is None or walk is None:
        return end
    mode, blocks, dc, ac, lut, mcus, ss, se = plan
    data, ends = _unstuff(buf[pos:end + 1], restart)
    status, done = walk(data, ends, lut, blocks, dc, ac, mcus, restart, ss, se, mode)
    if status == SHORT:
        raise corrupt(f"the scan data ends after {done} of the {mcus} MCUs the frame header declares")
    if status == EXTRA:
        raise corrupt(f"extraneous scan data after MCU {done} of {mcus} (the frame header disagrees with the scan)")
    if status == BAD_CODE:
        raise corrupt(f"bad Huffman code in MCU {done} of {mcus}")
    return end


def _end_of_scan(buf: np.ndarray, pos: int) -> int:
    """Position of the first marker at or after ``pos`` that is not a restart marker, stuffing or fill."""
    ff = np.flatnonzero(buf[pos:-1] == 0xFF) + pos
    nxt = buf[ff + 1]
    hits = ff[(nxt != 0) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))]
    if not len(hits):
        raise corrupt("no end-of-image marker (truncated file)")
    return int(hits[0])


def _unstuff(seg: np.ndarray, restart: int) -> tuple[np.ndarray, np.ndarray]:
    """A scan's bytes up to and including the 0xFF of the marker that ends it -> (data bytes without
    stuffing, fill bytes or restart markers; where each restart interval ends in them). Raises for restart
    markers out of order or where the frame has no restart interval."""
    body, nxt = seg[:-1], seg[1:]
    ff = body == 0xFF
    rst = ff & (nxt >= 0xD0) & (nxt <= 0xD7)
    drop = ff & ((nxt == 0xFF) | rst)  # fill bytes, the first byte of a restart marker
    drop[1:] |= (ff[:-1] & (body[1:] == 0)) | rst[:-1]  # stuffed zeros, the second byte of a restart marker
    at = np.flatnonzero(rst)
    if len(at) and not restart:
        raise corrupt("a restart marker in a scan without a restart interval")
    if (nxt[at] - 0xD0 != np.arange(len(at)) % 8).any():
        raise corrupt("restart markers out of order")
    kept = np.cumsum(~drop)  # kept[i]: data bytes up to i; a marker's 0xFF is dropped: the bytes before it
    total = kept[-1] if len(kept) else 0
    # zeros after the data: the walk reads ahead without bounds checks (a block reads at most 64 symbols of
    # at most 32 bits before it is checked against its interval's end)
    data = np.concatenate([body[~drop], np.zeros(PAD, np.uint8)])
    return data, np.append(kept[at], total).astype(np.int64)


_WALK: list = []


def _kernel():
    """The compiled walk, or None where numba cannot load (then structure only, logged once)."""
    if not _WALK:
        try:
            from ._jpeg_walk import walk_scan

            _WALK.append(walk_scan)
        except Exception as e:  # noqa: BLE001 - numba missing or broken: degrade, do not fail requests
            log.warning("JPEG scan check disabled (numba unavailable: %s): structure checked only", e)
            _WALK.append(None)
    return _WALK[0]


def warmup() -> bool:
    """Load the scan kernel now (from numba's cache ~1 s, compiling ~5 s), so that a server's first JPEG
    does not pay it; False where numba cannot load."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="JPEG")
    check_jpeg(buf.getvalue())
    return _kernel() is not None
