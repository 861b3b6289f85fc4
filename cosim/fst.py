"""The signal names in an FST waveform file, read from its hierarchy block.

The GTKWave layout (:mod:`.gtkwave`) names signals as the waves name them; reading them from
the FST the run wrote is the only way to be sure they match (Verilator's FST has no ``TOP``
scope: ports sit under ``$rootio`` and the design under its top module's name, and a vector
is declared as ``name [msb:lsb]``). Only the hierarchy is read -- the value-change blocks
before it are skipped by their lengths -- so a file of gigabytes takes well under a second.

The format (GTKWave's ``fstapi.c``): blocks of a type byte and a big-endian 64-bit length
(which counts itself); the hierarchy block (gzip, LZ4, or LZ4 twice) holds scope, upscope,
attribute and variable records.
"""

import struct
import zlib
from pathlib import Path

__all__ = ["signals", "FstError"]

_HIER_GZIP, _HIER_LZ4, _HIER_LZ4_TWICE = 4, 6, 7
_ATTR_BEGIN, _ATTR_END, _SCOPE, _UPSCOPE = 252, 253, 254, 255


class FstError(ValueError):
    """Not an FST file, or one without a hierarchy block."""


def signals(path):
    """``{"scope.sub.name": width}`` of every variable in the FST file at ``path``."""
    return _parse(_hierarchy(Path(path)))


def _hierarchy(path):
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        pos = 0
        while pos + 9 <= size:
            f.seek(pos)
            kind, length = struct.unpack(">BQ", f.read(9))
            if length < 8:
                raise FstError(f"{path}: a block of length {length} at {pos}")
            if kind in (_HIER_GZIP, _HIER_LZ4, _HIER_LZ4_TWICE):
                return _unpack(kind, f.read(length - 8))
            pos += 1 + length
    raise FstError(f"{path}: no hierarchy block (not an FST file, or not closed)")


def _unpack(kind, block):
    raw_len = struct.unpack(">Q", block[:8])[0]
    if kind == _HIER_GZIP:
        return zlib.decompress(block[8:], zlib.MAX_WBITS | 32)
    if kind == _HIER_LZ4:
        return _lz4(block[8:], raw_len)
    once_len, n = _varint(block, 8)
    return _lz4(_lz4(block[n:], once_len), raw_len)


def _lz4(src, size):
    """An LZ4 block (the raw format, no frame) decompressed to ``size`` bytes."""
    out = bytearray()
    i = 0
    while i < len(src):
        token = src[i]
        i += 1
        n, i = _lz4_length(src, i, token >> 4)
        out += src[i:i + n]
        i += n
        if i >= len(src):
            break
        offset = src[i] | src[i + 1] << 8
        i += 2
        n, i = _lz4_length(src, i, token & 15)
        n += 4
        start = len(out) - offset
        if offset >= n:
            out += out[start:start + n]
        else:                                   # overlapping: a repeating pattern
            for k in range(n):
                out.append(out[start + k])
    if len(out) != size:
        raise FstError(f"LZ4 block gave {len(out)} bytes, not {size}")
    return bytes(out)


def _lz4_length(src, i, n):
    """A literal or match length: 15 in the token continues in bytes until one is not 255."""
    if n == 15:
        while True:
            n += src[i]
            i += 1
            if src[i - 1] != 255:
                break
    return n, i


def _varint(data, i):
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _cstring(data, i):
    end = data.index(0, i)
    return data[i:end].decode(errors="replace"), end + 1


def _parse(data):
    out, scope, i = {}, [], 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag == _SCOPE:
            name, i = _cstring(data, i + 1)         # after the scope type
            _, i = _cstring(data, i)                # the component (module) name
            scope.append(name)
        elif tag == _UPSCOPE:
            scope.pop()
        elif tag == _ATTR_BEGIN:
            _, i = _cstring(data, i + 2)            # after type and subtype
            _, i = _varint(data, i)
        elif tag == _ATTR_END:
            pass
        else:                                       # a variable: tag is its type
            name, i = _cstring(data, i + 1)         # after the direction
            width, i = _varint(data, i)
            _, i = _varint(data, i)                 # alias of an earlier handle, or 0
            out[".".join(scope + [name.split(" [")[0]])] = width
    return out
