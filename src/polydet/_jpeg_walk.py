"""The compiled part of :mod:`polydet.jpegcheck`: walk one scan's Huffman-coded data, symbol by symbol.

The caller hands over the scan's bytes already unstuffed (0xFF 0x00 -> 0xFF, fill bytes and restart markers
removed, zeros appended) and where each restart interval ends. A block that needs bits past its interval's
end is "premature end of data" (libjpeg's JWRN_HIT_MARKER: libjpeg feeds zeros there and carries on),
and an interval whose MCUs leave 8 or more bits unread has extraneous data (JWRN_EXTRANEOUS_DATA). Only the
decoding of symbols and the skipping of their value bits happen here: no coefficient is kept.
"""

from __future__ import annotations

from numba import njit

OK, SHORT, EXTRA, BAD_CODE = 0, 1, 2, 3
SEQUENTIAL, DC_FIRST, DC_REFINE, AC_FIRST = 0, 1, 2, 3
_MASK = (1 << 56) - 1


@njit(cache=True, inline="always")
def _refill(data, end, pos, acc, nb):
    """Top the bit buffer up to more than 48 bits. Past ``end`` it reads what follows (the next interval, or
    the caller's zero padding): blocks are checked against ``end`` by the bits they used, not by content."""
    while nb <= 48:
        acc = ((acc << 8) | data[pos]) & _MASK
        pos += 1
        nb += 8
    return pos, acc, nb


@njit(cache=True, inline="always")
def _take(data, end, pos, acc, nb, luts, t):
    """Decode one symbol and skip its value bits in one step (the table's entries say the code's length plus
    the value bits that follow it): (symbol, or -1 for a code the table lacks; pos, acc, nb)."""
    if nb < 32:
        pos, acc, nb = _refill(data, end, pos, acc, nb)
    e = luts[t, (acc >> (nb - 16)) & 0xFFFF]
    if e == 0:
        return -1, pos, acc, nb
    return e & 0xFF, pos, acc, nb - (e >> 8)


@njit(cache=True)
def _sequential(data, start, end, luts, blocks, dc, ac, n_mcus):
    """Walk ``n_mcus`` MCUs of a sequential scan over ``data[start:end]``: (status, MCUs walked). The hot
    loop of the check: written out by hand (through ``_take`` numba made it ~2.5x slower)."""
    pos, acc, nb = start, 0, 0
    total = (end - start) * 8
    for m in range(n_mcus):
        for c in range(blocks.shape[0]):
            tdc, tac = dc[c], ac[c]
            for _ in range(blocks[c]):
                t, k = tdc, 0
                while k <= 63:  # k = 0: the DC symbol, then AC symbols up to the end of the block
                    if nb < 32:
                        while nb <= 48:
                            acc = ((acc << 8) | data[pos]) & _MASK
                            pos += 1
                            nb += 8
                    e = luts[t, (acc >> (nb - 16)) & 0xFFFF]
                    if e == 0:
                        return (SHORT if total - (pos * 8 - nb - start * 8) < 16 else BAD_CODE), m
                    nb -= e >> 8
                    if k == 0:
                        t, k = tac, 1
                        continue
                    r = (e >> 4) & 15
                    if e & 15:
                        k += r + 1
                    elif r == 15:
                        k += 16
                    else:
                        break
                if pos * 8 - nb - start * 8 > total:
                    return SHORT, m
    return (EXTRA if total - (pos * 8 - nb - start * 8) >= 8 else OK), n_mcus


@njit(cache=True)
def _progressive(data, start, end, luts, blocks, dc, ac, n_mcus, ss, se, mode):
    """Walk ``n_mcus`` MCUs of a progressive scan's first pass (DC first, DC refinement, AC first) over
    ``data[start:end]``: (status, MCUs walked)."""
    pos, acc, nb, eob = start, 0, 0, 0
    total = (end - start) * 8
    for m in range(n_mcus):
        for c in range(blocks.shape[0]):
            for _ in range(blocks[c]):
                s = 0
                if mode == DC_REFINE:
                    if nb < 32:
                        pos, acc, nb = _refill(data, end, pos, acc, nb)
                    nb -= 1
                elif mode == DC_FIRST:
                    s, pos, acc, nb = _take(data, end, pos, acc, nb, luts, dc[c])
                elif eob > 0:
                    eob -= 1
                else:
                    k = ss
                    while k <= se:
                        s, pos, acc, nb = _take(data, end, pos, acc, nb, luts, ac[c])
                        if s < 0:
                            break
                        r = s >> 4
                        if s & 15:
                            k += r + 1
                        elif r == 15:
                            k += 16
                        else:
                            if r:  # an end-of-band run over this and the next blocks
                                nb -= r
                                eob = (1 << r) + ((acc >> nb) & ((1 << r) - 1)) - 1
                            break
                used = pos * 8 - nb - start * 8
                if s < 0:
                    return (SHORT if total - used < 16 else BAD_CODE), m
                if used > total:
                    return SHORT, m
    return (EXTRA if total - (pos * 8 - nb - start * 8) >= 8 else OK), n_mcus


@njit(cache=True)
def walk_scan(data, ends, luts, blocks, dc, ac, mcus, restart, ss, se, mode):
    """Walk a scan of ``mcus`` MCUs whose restart intervals (``restart`` MCUs each, 0: one interval) end at
    ``ends`` in ``data``: (status, MCUs walked). ``blocks[c]`` blocks of scan component c per MCU, with
    DC table ``luts[dc[c]]`` and AC table ``luts[ac[c]]``."""
    per = restart if restart > 0 else mcus
    done, start = 0, 0
    for i in range(ends.shape[0]):
        if done >= mcus:
            return EXTRA, done  # more restart intervals than MCUs
        n = min(per, mcus - done)
        if mode == SEQUENTIAL:
            status, walked = _sequential(data, start, ends[i], luts, blocks, dc, ac, n)
        else:
            status, walked = _progressive(data, start, ends[i], luts, blocks, dc, ac, n, ss, se, mode)
        if status != OK:
            return status, done + walked
        done += n
        start = ends[i]
    return (OK if done == mcus else SHORT), done
