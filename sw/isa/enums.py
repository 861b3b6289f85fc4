"""Enumerations of the command ISA.

Part of the single ISA definition (see :mod:`npusim.sw.isa.table`): every enum a command field
can hold lives here, with an explicit width, so the encoder, the Amaranth layouts and the ISA
reference page all read the same values.
"""

import enum


class IsaEnum(enum.IntEnum):
    """An ISA enum: an ``IntEnum`` whose encoded width in bits is ``WIDTH``."""

    @classmethod
    def describe(cls, value):
        """One-line meaning of ``value``, as written in the table."""
        return cls._DOCS[cls(value).name]


def _enum(name, width, members, doc):
    """Build an :class:`IsaEnum` subclass from ``[(NAME, value, meaning), ...]``."""
    cls = IsaEnum(name, [(m, v) for m, v, _ in members])
    type.__setattr__(cls, "WIDTH", width)
    type.__setattr__(cls, "_DOCS", {m: d for m, _, d in members})
    cls.__doc__ = doc
    cls.__module__ = __name__
    for m, v, _ in members:
        if v >= (1 << width):
            raise ValueError(f"{name}.{m} = {v} does not fit in {width} bits")
    return cls


Space = _enum("Space", 2, [
    ("DRAM", 0, "local device DRAM"),
    ("SRAM", 1, "local NE-tile scratchpad"),
    ("LINK", 2, "bus address on the link: host memory or a peer device's BAR"),
], "Address space of a DMA operand.")

Engine = _enum("Engine", 2, [
    ("DMA_IN", 0, "DMA queue 0 (by convention loads into SRAM)"),
    ("DMA_OUT", 1, "DMA queue 1 (by convention stores from SRAM)"),
    ("COMPUTE", 2, "NE tile: matrix and vector unit"),
    ("LINK", 3, "link DMA queue (peer-to-peer and host traffic)"),
], "Engine queue a command is dispatched to.")

DType = _enum("DType", 1, [
    ("FP32", 0, "IEEE-754 binary32"),
    ("BF16", 1, "bfloat16 (upper half of a binary32)"),
], "Element type of a tensor operand in SRAM.")

VectorOp = _enum("VectorOp", 6, [
    # fp32 arithmetic (IEEE-754, round to nearest even, subnormals kept, NaN canonical)
    ("ADD", 0, "a + b"),
    ("SUB", 1, "a - b"),
    ("MUL", 2, "a * b"),
    ("MAX", 3, "maximum(a, b); NaN if either is NaN; +0 > -0"),
    ("MIN", 4, "minimum(a, b); NaN if either is NaN; -0 < +0"),
    # comparisons: all-ones (0xFFFFFFFF) when true, 0 when false; false if either is NaN
    ("CMP_LT", 5, "a < b"),
    ("CMP_LE", 6, "a <= b"),
    ("CMP_EQ", 7, "a == b"),
    ("SELECT", 8, "c != 0 ? a : b (bitwise, c is a mask)"),
    # 32-bit integer and bit operations on the raw bit patterns (two's complement, wrapping)
    ("IADD", 9, "a + b (int32, wrapping)"),
    ("ISUB", 10, "a - b (int32, wrapping)"),
    ("AND", 11, "a & b"),
    ("OR", 12, "a | b"),
    ("XOR", 13, "a ^ b"),
    ("SHL", 14, "a << (b & 31)"),
    ("SHR", 15, "a >> (b & 31), logical"),
    ("SRA", 16, "a >> (b & 31), arithmetic"),
    # conversions
    ("F2I", 17, "fp32 -> int32, round to nearest even, saturating, NaN -> 0"),
    ("I2F", 18, "int32 -> fp32, round to nearest even"),
    ("RND_BF16", 19, "fp32 rounded to bf16 precision (RNE), result kept as fp32"),
    ("MOV", 20, "a"),
    # microcoded transcendentals (sequences of the primitive ops above; see firmware.microcode)
    ("EXP", 32, "e ** a (microcode)"),
    ("RECIP", 33, "1 / a (microcode)"),
    ("RSQRT", 34, "1 / sqrt(a) (microcode)"),
    ("SILU", 35, "a / (1 + e ** -a) (microcode)"),
], "Vector-unit operation: one lane-wise op on fp32 bit patterns.")

VBMode = _enum("VBMode", 3, [
    ("TILE", 0, "b[i, j]: a tile like a"),
    ("ROW", 1, "b[i]: one value per row, broadcast along the row"),
    ("COL", 2, "b[j]: one value per column, broadcast down the columns"),
    ("SCALAR", 3, "b[0]: one value from SRAM for the whole tile"),
    ("IMM", 4, "the command's `imm` bit pattern for the whole tile"),
], "How the VECTOR command reads its operand b.")

RedOp = _enum("RedOp", 1, [
    ("SUM", 0, "fp32 sum, sequential in j from +0"),
    ("MAX", 1, "fp32 maximum, sequential in j from -inf"),
], "Row reduction of the REDUCE command.")

RegOp = _enum("RegOp", 4, [
    ("ADD", 0, "x + y"),
    ("SUB", 1, "x - y"),
    ("MUL", 2, "x * y (low 64 bits)"),
    ("AND", 3, "x & y"),
    ("OR", 4, "x | y"),
    ("XOR", 5, "x ^ y"),
    ("SHL", 6, "x << (y & 63)"),
    ("SHR", 7, "x >> (y & 63), logical"),
    ("MIN", 8, "unsigned minimum"),
    ("MAX", 9, "unsigned maximum"),
], "Operation of the REG_OP command on 64-bit run-time registers.")

BranchCond = _enum("BranchCond", 2, [
    ("EQ", 0, "R[ra] == R[rb]"),
    ("NE", 1, "R[ra] != R[rb]"),
    ("LTU", 2, "R[ra] < R[rb], unsigned"),
    ("GEU", 3, "R[ra] >= R[rb], unsigned"),
], "Condition of the BRANCH command.")

CommandClass = _enum("CommandClass", 2, [
    ("CONTROL", 0, "runs in the command processor, in stream order"),
    ("DMA", 1, "runs on a DMA engine queue"),
    ("COMPUTE", 2, "runs on the NE tile (the COMPUTE queue)"),
    ("SYNC", 3, "semaphores: ordered on the engine queue it names"),
], "Class of a command (documentation and dispatch).")

ErrorCode = _enum("ErrorCode", 8, [
    ("OK", 0, "no error"),
    ("BAD_MAGIC", 1, "a stream header does not start with b\"NPUS\""),
    ("BAD_VERSION", 2, "a stream header's ISA version is not supported"),
    ("TRUNCATED_STREAM", 3, "a stream is shorter than its header says, or runs past memory"),
    ("BAD_OPCODE", 4, "unknown opcode"),
    ("RESERVED_BITS", 5, "a reserved bit of a command is set"),
    ("BAD_FIELD", 6, "a field holds a value its command does not allow (enum value, engine)"),
    ("DMA_WINDOW", 7, "a DMA touches bytes outside the windows the host granted"),
    ("SRAM_BOUNDS", 8, "an operand runs past the end of SRAM"),
    ("ALIGNMENT", 9, "an address, length or stride is not aligned as required"),
    ("BLOCK_TABLE", 10, "a block-table or slot-mapping entry points outside the KV pool"),
    ("BAD_SHAPE", 11, "a shape is not allowed (e.g. ring_rows = 0, accumulate into bf16)"),
    ("BAD_BRANCH", 12, "a branch target is outside the current buffer"),
    ("CALL_DEPTH", 13, "CALL inside a called stream"),
    ("SEM_TIMEOUT", 14, "the watchdog expired while a semaphore wait or fence was pending"),
    ("LINK_TIMEOUT", 15, "a link read got no completion in time (link down)"),
    ("LINK_UNSUPPORTED", 16, "the link target rejected the request (no device or window there)"),
    ("TRAILING_BYTES", 17, "host-side decoder: bytes follow the last command of a stream"),
    ("BAD_CHECKSUM", 18, "host-side decoder: the stream's CRC-32 does not match its header"),
    ("OPERAND_OVERLAP", 19, "a compute command's output overlaps one of its inputs (VECTOR "
                            "and MASK: other than exactly in place)"),
], "Error code reported in a device's status register and completion record.")
