"""The command ISA: the one table every other representation is generated from.

A command is 256 bits (32 bytes, little-endian). Bits 7:0 hold the opcode; the fields of that
opcode follow from bit 8 upward in the order listed here, each ``width`` bits wide, LSB first.
Every bit not covered by a field is reserved and must be zero.

Operands that can change at run time (addresses, lengths, counts, positions) are
*register + immediate*: the value is ``R[reg] + imm`` over 64 bits, where ``R`` is the run-time
register file (written by the host over MMIO before a launch, or by ``REG_*`` commands) and
``R[0]`` always reads 0. The command processor resolves them when it dispatches the command, in
stream order, so one compiled stream serves every decode step.

The encoder, decoder and disassembler (:mod:`.codec`), the Amaranth layouts
(:mod:`npusim.hw.isa`) and ``docs/isa.md`` (:mod:`.docgen`) are all derived from this module.
"""

from dataclasses import dataclass

from .enums import (
    BranchCond, CommandClass, DType, Engine, ErrorCode, RedOp, RegOp, Space, VBMode, VectorOp,
)

__all__ = [
    "ISA_VERSION", "COMMAND_BYTES", "COMMAND_BITS", "OPCODE_BITS", "NUM_REGS", "NUM_SEMAPHORES",
    "STREAM_MAGIC", "HEADER_BYTES", "Field", "CommandSpec", "COMMANDS", "BY_NAME", "BY_OPCODE",
    "HEADER_FIELDS", "ErrorCode",
]

#: (major, minor). A decoder accepts the same major and a minor no newer than its own.
ISA_VERSION = (1, 0)
COMMAND_BYTES = 32
COMMAND_BITS = COMMAND_BYTES * 8
OPCODE_BITS = 8
REG_BITS = 5
NUM_REGS = 1 << REG_BITS
SEM_BITS = 6
NUM_SEMAPHORES = 1 << SEM_BITS
#: ``b"NPUS"`` read as a little-endian u32.
STREAM_MAGIC = int.from_bytes(b"NPUS", "little")
HEADER_BYTES = COMMAND_BYTES


@dataclass(frozen=True)
class Field:
    """One bit field of a command.

    ``kind`` is ``uint``, ``sint`` (two's complement), ``enum`` (``enum`` names the
    :class:`~.enums.IsaEnum`), ``reg`` (a run-time register index) or ``flag`` (1 bit).
    ``group`` ties the parts of one operand together (e.g. ``src_space``, ``src_reg`` and
    ``src_off`` form the address operand ``src``) so the disassembler prints them as one.
    """

    name: str
    width: int
    kind: str
    doc: str
    enum: type | None = None
    group: str | None = None
    #: For the offset of an address operand without a space field: the space it always is in.
    space: Space | None = None
    #: Optional operand: the disassembler leaves it out when it is zero.
    optional: bool = False

    def __post_init__(self):
        assert self.kind in ("uint", "sint", "enum", "reg", "flag"), self.kind
        assert (self.kind == "enum") == (self.enum is not None), self.name
        if self.enum is not None:
            assert self.width == self.enum.WIDTH, self.name

    @property
    def signed(self):
        return self.kind == "sint"

    def fits(self, value):
        """Whether ``value`` is representable in this field."""
        if self.kind == "sint":
            return -(1 << (self.width - 1)) <= value < (1 << (self.width - 1))
        return 0 <= value < (1 << self.width)


@dataclass(frozen=True)
class CommandSpec:
    """One opcode: its name, class, meaning, fields and bit layout.

    ``engine`` is the engine queue a command always runs on, or ``None`` when the command's
    ``engine`` field chooses it (``engines`` then lists the allowed values), or when the command
    runs in the command processor itself (``cls`` is ``CONTROL``).
    """

    name: str
    opcode: int
    cls: CommandClass
    doc: str
    fields: tuple
    engine: Engine | None = None
    engines: tuple = ()

    def __post_init__(self):
        names = [f.name for f in self.fields]
        assert len(set(names)) == len(names), f"{self.name}: duplicate field"
        assert self.used_bits <= COMMAND_BITS, f"{self.name}: {self.used_bits} bits > {COMMAND_BITS}"
        assert 0 <= self.opcode < (1 << OPCODE_BITS)

    @property
    def used_bits(self):
        return OPCODE_BITS + sum(f.width for f in self.fields)

    @property
    def offsets(self):
        """``{field name: (lsb, width)}`` within the 256-bit command."""
        out, lsb = {}, OPCODE_BITS
        for f in self.fields:
            out[f.name] = (lsb, f.width)
            lsb += f.width
        return out

    def field(self, name):
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


# -- field helpers: composite operands expand into several fields sharing a group ---------------

def U(name, width, doc, group=None, optional=False):
    return Field(name, width, "uint", doc, group=group, optional=optional)


def S(name, width, doc, group=None):
    return Field(name, width, "sint", doc, group=group)


def E(name, enum, doc, group=None):
    return Field(name, enum.WIDTH, "enum", doc, enum=enum, group=group)


def F(name, doc):
    return Field(name, 1, "flag", doc)


def R(name, doc, group=None):
    return Field(name, REG_BITS, "reg", doc, group=group)


def reg_imm(name, width, doc, signed=False):
    """A run-time operand ``R[<name>_reg] + <name>``."""
    imm = (S if signed else U)(name, width, f"{doc} (immediate part)", group=name)
    return (R(f"{name}_reg", f"register added to `{name}`", group=name), imm)


def address(name, doc, space=None, optional=False):
    """An address operand ``<space>[R[<name>_reg] + <name>_off]`` (offset signed 32-bit); its
    space is a field unless the operand is always in ``space``."""
    parts = ()
    if space is None:
        parts += (E(f"{name}_space", Space, f"address space of `{name}`", group=name),)
    off = Field(f"{name}_off", 32, "sint", f"byte offset of {doc} from its base register",
                group=name, space=space, optional=optional)
    return parts + (R(f"{name}_reg", f"base register of `{name}`", group=name), off)


SRAM_ADDR_BITS = 24
LD_BITS = 16
DIM_BITS = 16


def sram(name, doc):
    return U(name, SRAM_ADDR_BITS, f"SRAM byte address of {doc}")


def ld(name, doc):
    return U(name, LD_BITS, f"row stride of {doc}, in elements")


def dma_engine():
    return E("engine", Engine, "engine queue that runs the transfer (DMA_IN, DMA_OUT or LINK)")


DMA_ENGINES = (Engine.DMA_IN, Engine.DMA_OUT, Engine.LINK)
ANY_ENGINE = tuple(Engine)

C = CommandClass

COMMANDS = (
    # -- control: executed by the command processor itself, in stream order ---------------------
    CommandSpec("NOP", 0x00, C.CONTROL, "Does nothing.", ()),
    CommandSpec("HALT", 0x01, C.CONTROL,
                "Stops the queue after all engines drain; status becomes HALTED with `code`.",
                (U("code", 16, "user halt code reported in the status register"),)),
    CommandSpec("REG_SET", 0x02, C.CONTROL, "`R[rd] = imm`.",
                (R("rd", "destination register (writes to r0 are ignored)"),
                 U("imm", 64, "64-bit value"))),
    CommandSpec("REG_OP", 0x03, C.CONTROL, "`R[rd] = R[rs1] <op> (R[rs2] + imm)` over 64 bits.",
                (E("op", RegOp, "operation"),
                 R("rd", "destination register (writes to r0 are ignored)"),
                 R("rs1", "first source register"),
                 R("rs2", "second source register"),
                 S("imm", 32, "immediate added to R[rs2]"))),
    CommandSpec("BRANCH", 0x04, C.CONTROL,
                "If `R[ra] <cond> R[rb]`, continue at this command's index + `target` "
                "(within the current buffer).",
                (E("cond", BranchCond, "condition"),
                 R("ra", "first register compared"),
                 R("rb", "second register compared"),
                 S("target", 24, "relative target, in commands"))),
    CommandSpec("CALL", 0x05, C.CONTROL,
                "Runs the stream stored in DRAM at `addr` (header included), then returns. "
                "One level deep.",
                address("addr", "the called stream's header", space=Space.DRAM)),
    CommandSpec("FENCE", 0x06, C.CONTROL,
                "Waits until every engine in `engines` has finished all commands dispatched to it.",
                (U("engines", 4, "bit mask of engines (bit i = Engine i); 0 means all"),)),
    CommandSpec("COMPLETE", 0x07, C.CONTROL,
                "Waits for all engines, writes a 16-byte completion record "
                "{seq u32, status u32, cycles u64} to `dst` (DRAM or LINK space, 16-byte "
                "aligned), then raises MSI `vector` if `irq`.",
                address("dst", "the completion record")
                + (U("seq", 32, "sequence number copied into the record"),
                   F("irq", "send an MSI to the host after the record is written"),
                   U("vector", 5, "MSI vector"))),

    # -- DMA: run on a DMA engine queue; addresses resolved at dispatch ---------------------------
    CommandSpec("DMA_COPY", 0x10, C.DMA,
                "3-D strided copy: for i2 < n2, i1 < n1: copy `len` bytes from "
                "`src + i2*src_stride2 + i1*src_stride1` to `dst + i2*dst_stride2 + i1*dst_stride1`.",
                (dma_engine(),) + address("src", "the source") + address("dst", "the destination")
                + reg_imm("len", 20, "bytes per contiguous row")
                + reg_imm("n1", 12, "rows in dimension 1")
                + (U("n2", 12, "planes in dimension 2"),
                   U("src_stride1", 24, "source bytes between rows", optional=True),
                   U("dst_stride1", 24, "destination bytes between rows", optional=True),
                   U("src_stride2", 28, "source bytes between planes", optional=True),
                   U("dst_stride2", 28, "destination bytes between planes", optional=True)),
                engines=DMA_ENGINES),
    CommandSpec("DMA_GATHER", 0x11, C.DMA,
                "Paged gather through a block table (vLLM layout): for t < n, tok = t0 + t, "
                "blk = table[tok >> block_log2] (u32 in DRAM, read at run time); blk must be < "
                "pool_blocks; copy `row_bytes` from `pool + blk*(row_stride << block_log2) + "
                "(tok & (2**block_log2 - 1))*row_stride` (DRAM) to `dst + t*dst_stride`.",
                (dma_engine(),) + address("table", "the block table (u32 entries)", space=Space.DRAM)
                + address("pool", "the KV pool", space=Space.DRAM)
                + address("dst", "the destination")
                + (U("row_bytes", 16, "bytes copied per token"),
                   U("row_stride", 16, "bytes between consecutive tokens of a block"),
                   U("dst_stride", 16, "destination bytes between tokens"),
                   U("block_log2", 4, "log2 of the block size in tokens"),
                   U("pool_blocks", 20, "number of blocks in the pool"))
                + reg_imm("n", 16, "number of tokens")
                + reg_imm("t0", 16, "first token position"),
                engines=DMA_ENGINES),
    CommandSpec("DMA_SCATTER", 0x12, C.DMA,
                "Paged scatter through a slot mapping (vLLM layout): for i < n, slot = "
                "slots[i0 + i] (u32 in DRAM, read at run time); slot >> block_log2 must be < "
                "pool_blocks; copy `row_bytes` from `src + i*src_stride` to `pool + "
                "(slot >> block_log2)*(row_stride << block_log2) + (slot & (2**block_log2 - 1))"
                "*row_stride` (DRAM).",
                (dma_engine(),) + address("slots", "the slot mapping (u32 entries)", space=Space.DRAM)
                + address("pool", "the KV pool", space=Space.DRAM)
                + address("src", "the source")
                + (U("row_bytes", 16, "bytes copied per token"),
                   U("row_stride", 16, "bytes between consecutive tokens of a block"),
                   U("src_stride", 16, "source bytes between tokens"),
                   U("block_log2", 4, "log2 of the block size in tokens"),
                   U("pool_blocks", 20, "number of blocks in the pool"))
                + reg_imm("n", 16, "number of tokens")
                + reg_imm("i0", 16, "first slot-mapping index"),
                engines=DMA_ENGINES),
    CommandSpec("DMA_RING", 0x13, C.DMA,
                "Modulo (ring) addressing for sliding windows: for i < n, row = (r0 + i) mod "
                "ring_rows; the ring side is `ring + row*ring_stride`, the linear side "
                "`lin + i*lin_stride`; copies `row_bytes` from linear to ring (`to_ring`) "
                "or from ring to linear.",
                (dma_engine(),) + address("ring", "the ring buffer") + address("lin", "the linear side")
                + (F("to_ring", "1: linear -> ring; 0: ring -> linear"),
                   U("row_bytes", 16, "bytes per row"),
                   U("ring_stride", 20, "bytes between ring rows"),
                   U("lin_stride", 20, "bytes between linear rows"),
                   U("ring_rows", 16, "rows in the ring (>= 1)"))
                + reg_imm("n", 16, "rows copied")
                + reg_imm("r0", 16, "ring row of the first copied row (taken mod ring_rows)"),
                engines=DMA_ENGINES),

    # -- compute: run on the NE tile, operands in SRAM -------------------------------------------
    CommandSpec("MATMUL", 0x20, C.COMPUTE,
                "`C = A x B` (or `C += A x B` with `acc`): A is M x K bf16 (stored K x M with "
                "`a_trans`), B is K x N bf16 (stored N x K with `b_trans`), C is M x N. Each "
                "output accumulates in fp32 over k = 0..K-1 in order from +0 (or from C), and is "
                "stored as `c_dtype` (bf16 rounds to nearest even).",
                (sram("a", "A"), ld("lda", "A"), sram("b", "B"), ld("ldb", "B"),
                 sram("c", "C"), ld("ldc", "C"),
                 F("a_trans", "A is stored transposed (K x M)"),
                 F("b_trans", "B is stored transposed (N x K)"),
                 F("acc", "accumulate into C (C must be FP32)"),
                 E("c_dtype", DType, "element type C is stored as"))
                + reg_imm("m", DIM_BITS, "rows of A and C")
                + reg_imm("n", DIM_BITS, "columns of B and C")
                + reg_imm("k", DIM_BITS, "columns of A, rows of B"),
                engine=Engine.COMPUTE),
    CommandSpec("VECTOR", 0x21, C.COMPUTE,
                "Lane-wise `dst[i, j] = op(a[i, j], b, c[i, j])` over a rows x cols tile; `b` per "
                "`b_mode`; operands load as their dtype and compute in fp32; bf16 results round to "
                "nearest even. `dst` may overlap an operand only exactly in place (same address, "
                "row stride and element type, b in TILE mode), else OPERAND_OVERLAP.",
                (E("op", VectorOp, "operation"),
                 sram("dst", "the result"), ld("ldd", "the result"),
                 sram("a", "operand a"), ld("lda", "operand a"),
                 sram("b", "operand b"), ld("ldb", "operand b (TILE mode)"),
                 E("b_mode", VBMode, "how operand b is read"),
                 U("imm", 32, "operand b in IMM mode (fp32/int32 bit pattern)", optional=True),
                 sram("c", "operand c (SELECT's mask; read with lda)"),
                 E("a_dtype", DType, "element type of a"),
                 E("d_dtype", DType, "element type of dst"))
                + reg_imm("rows", 16, "tile rows")
                + reg_imm("cols", 16, "tile columns"),
                engine=Engine.COMPUTE),
    CommandSpec("REDUCE", 0x22, C.COMPUTE,
                "Row reduction `dst[i] = op over j of a[i, j]` (fp32), sequential in j from the "
                "identity (+0 for SUM, -inf for MAX).",
                (E("op", RedOp, "reduction"),
                 sram("dst", "the result vector (fp32, one per row)"),
                 sram("a", "the input tile"), ld("lda", "the input tile"),
                 E("a_dtype", DType, "element type of a"))
                + reg_imm("rows", 16, "tile rows")
                + reg_imm("cols", 16, "tile columns"),
                engine=Engine.COMPUTE),
    CommandSpec("MASK", 0x23, C.COMPUTE,
                "Attention mask generated in the kernel: for row i (query position "
                "`q0 + (i >> q_shift)`) and column j (key position `k0 + j`), sets the fp32 "
                "element to -inf when `causal` and key > query, when `window` > 0 and "
                "key <= query - window, or when key >= `klen`; else copies it. `dst` is `a` (in "
                "place) or does not overlap it (else OPERAND_OVERLAP).",
                (sram("dst", "the result (fp32)"), sram("a", "the scores (fp32)"),
                 ld("ld", "dst and a"),
                 F("causal", "mask keys after the query"),
                 U("q_shift", 5, "log2 of rows sharing one query position"))
                + reg_imm("rows", 12, "tile rows")
                + reg_imm("cols", 12, "tile columns")
                + reg_imm("q0", 20, "query position of row 0")
                + reg_imm("k0", 20, "key position of column 0")
                + reg_imm("klen", 20, "number of valid keys")
                + (U("window", 20, "sliding-window size in tokens (0: none)", optional=True),),
                engine=Engine.COMPUTE),

    # -- synchronisation ---------------------------------------------------------------------------
    CommandSpec("SEM_WAIT", 0x30, C.SYNC,
                "Stalls `engine`'s queue until semaphore `sem` >= `value`; with `consume`, "
                "then subtracts `value`. The watchdog turns a wait that outlasts it into SEM_TIMEOUT.",
                (E("engine", Engine, "engine queue that waits"),
                 U("sem", SEM_BITS, "semaphore index"),
                 U("value", 16, "value waited for"),
                 F("consume", "subtract `value` once satisfied (counting semaphore)")),
                engines=ANY_ENGINE),
    CommandSpec("SEM_SIGNAL", 0x31, C.SYNC,
                "After `engine`'s earlier commands finish, adds `amount` to semaphore `sem`: "
                "locally, or with `remote` as a posted write to the peer whose MMIO base is "
                "`R[peer_reg] + peer_off` (ordered after this engine's earlier link writes).",
                (E("engine", Engine, "engine queue the signal is ordered on"),
                 U("sem", SEM_BITS, "semaphore index"),
                 U("amount", 16, "increment"),
                 F("remote", "signal the peer's semaphore over the link"))
                + address("peer", "the peer's MMIO base", space=Space.LINK, optional=True),
                engines=ANY_ENGINE),
)

BY_NAME = {c.name: c for c in COMMANDS}
BY_OPCODE = {c.opcode: c for c in COMMANDS}
assert len(BY_OPCODE) == len(COMMANDS), "duplicate opcode"

#: The stream header: one 32-byte slot before the commands. ``(name, byte offset, bytes, meaning)``.
HEADER_FIELDS = (
    ("magic", 0, 4, 'b"NPUS"'),
    ("version_major", 4, 1, "ISA major version; must equal the decoder's"),
    ("version_minor", 5, 1, "ISA minor version; must not exceed the decoder's"),
    ("flags", 6, 2, "reserved, zero"),
    ("n_commands", 8, 4, "number of 32-byte commands that follow"),
    ("crc32", 12, 4, "CRC-32 (IEEE) of the command bytes; checked by the host-side decoder"),
    ("reserved", 16, 16, "zero"),
)
