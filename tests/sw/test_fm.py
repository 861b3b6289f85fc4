"""The functional model: every command class against numpy references, multi-device traffic,
completion and interrupts, and every device error code provoked with memory left intact."""

import numpy as np
import pytest
import torch

from npusim.sw import numerics as nx
from npusim.sw import regmap
from npusim.sw.fm import DeviceError, System
from npusim.sw.isa import (
    BranchCond, Command, DType, Engine, ErrorCode, RedOp, RegOp, Space, VBMode, VectorOp,
    encode_stream,
)
from npusim.sw.regmap import DeviceState

STREAM = 0x10_0000  # where tests load their streams in DRAM
rng = np.random.default_rng(1234)


def run(system, streams, regs=None, expect_ok=True, max_cycles=50_000_000):
    """Launch one stream per device (dict device -> command list) and run to the end."""
    for dev, cmds in streams.items():
        system.launch(dev, encode_stream(cmds), STREAM, regs=(regs or {}).get(dev))
    system.run(max_cycles)
    if expect_ok:
        system.check()
    return system


def bf16(x):
    return nx.fp32_to_bf16(np.asarray(x, np.float32).view(np.uint32))


def load(dev, space, addr, array):
    mem = dev.dram if space == Space.DRAM else dev.sram
    mem.write(addr, np.ascontiguousarray(array).view(np.uint8))


def copy(src_space, src, dst_space, dst, nbytes, engine=Engine.DMA_IN, **kw):
    return Command("DMA_COPY", engine=engine, src_space=src_space, src_off=src,
                   dst_space=dst_space, dst_off=dst, len=nbytes, n1=1, n2=1, **kw)


# -- DMA ------------------------------------------------------------------------------------------

def test_strided_3d_copy_round_trip():
    s = System()
    d = s.devices[0]
    src = rng.integers(0, 256, 64 * 1024, dtype=np.uint8)
    load(d, Space.DRAM, 0x2000, src)
    # 3 planes x 5 rows x 24 bytes, source strides 40 / 400, dense in SRAM
    cmds = [Command("DMA_COPY", engine=Engine.DMA_IN, src_off=0x2000, dst_space=Space.SRAM,
                    dst_off=0x100, len=24, n1=5, n2=3, src_stride1=40, src_stride2=400,
                    dst_stride1=24, dst_stride2=120),
            Command("FENCE"),
            Command("DMA_COPY", engine=Engine.DMA_OUT, src_space=Space.SRAM, src_off=0x100,
                    dst_off=0x9000, len=360, n1=1, n2=1)]
    run(s, {0: cmds})
    expect = np.concatenate([src[p * 400 + r * 40:p * 400 + r * 40 + 24]
                             for p in range(3) for r in range(5)])
    assert np.array_equal(d.dram.read(0x9000, 360), expect)


def block_tables(n_tokens, block_log2, pool_blocks):
    blocks = -(-n_tokens // (1 << block_log2))
    return rng.permutation(pool_blocks)[:blocks].astype("<u4")


@pytest.mark.parametrize("block_log2,n_tokens,t0", [(4, 37, 0), (3, 20, 5), (0, 9, 2)])
def test_paged_gather_matches_reference(block_log2, n_tokens, t0):
    s = System()
    d = s.devices[0]
    heads, head_dim, pool_blocks = 2, 8, 16
    B = 1 << block_log2
    row_stride = heads * head_dim * 2  # [blocks, B, heads, head_dim] bf16 (vLLM flash layout)
    pool = rng.integers(0, 1 << 16, (pool_blocks, B, heads, head_dim), dtype=np.uint16)
    table = block_tables(t0 + n_tokens, block_log2, pool_blocks)
    load(d, Space.DRAM, 0x40000, pool)
    load(d, Space.DRAM, 0x1000, table)
    head = 1
    cmd = Command("DMA_GATHER", engine=Engine.DMA_IN, table_reg=3, pool_off=0x40000 + head * 16,
                  dst_space=Space.SRAM, dst_off=0, row_bytes=head_dim * 2, row_stride=row_stride,
                  dst_stride=head_dim * 2, block_log2=block_log2, pool_blocks=pool_blocks,
                  n_reg=4, t0_reg=5)
    run(s, {0: [cmd]}, regs={0: {3: 0x1000, 4: n_tokens, 5: t0}})
    toks = np.arange(t0, t0 + n_tokens)
    expect = pool[table[toks >> block_log2], toks & (B - 1), head]
    got = d.sram.read(0, n_tokens * head_dim * 2).view(np.uint16).reshape(n_tokens, head_dim)
    assert np.array_equal(got, expect)


def test_slot_mapping_scatter_writes_only_its_slots():
    s = System()
    d = s.devices[0]
    row, pool_blocks, block_log2 = 32, 8, 2
    before = rng.integers(0, 256, pool_blocks * 4 * row, dtype=np.uint8)
    load(d, Space.DRAM, 0x40000, before)
    slots = np.array([5, 30, 0, 17], "<u4")
    load(d, Space.DRAM, 0x1000, slots)
    new = rng.integers(0, 256, 4 * row, dtype=np.uint8)
    load(d, Space.SRAM, 0x800, new)
    run(s, {0: [Command("DMA_SCATTER", engine=Engine.DMA_OUT, slots_off=0x1000,
                        pool_off=0x40000, src_space=Space.SRAM, src_off=0x800, row_bytes=row,
                        row_stride=row, src_stride=row, block_log2=block_log2,
                        pool_blocks=pool_blocks, n=4)]})
    expect = before.copy().reshape(-1, row)
    expect[slots] = new.reshape(4, row)
    assert np.array_equal(d.dram.read(0x40000, before.size), expect.reshape(-1))


def test_ring_dma_wraps_modulo_window():
    s = System()
    d = s.devices[0]
    ring_rows, row = 6, 16
    lin = rng.integers(0, 256, 4 * row, dtype=np.uint8)
    load(d, Space.SRAM, 0, lin)
    to_ring = Command("DMA_RING", engine=Engine.DMA_OUT, ring_off=0x3000, lin_space=Space.SRAM,
                      to_ring=True, row_bytes=row, ring_stride=row, lin_stride=row,
                      ring_rows=ring_rows, n=4, r0_reg=6)
    back = Command("DMA_RING", engine=Engine.DMA_OUT, ring_off=0x3000, lin_space=Space.SRAM,
                   lin_off=0x400, row_bytes=row, ring_stride=row, lin_stride=row,
                   ring_rows=ring_rows, n=4, r0_reg=6)
    run(s, {0: [to_ring, back]}, regs={0: {6: 16}})  # 16 mod 6 = 4: rows 4, 5, 0, 1
    ring = d.dram.read(0x3000, ring_rows * row).reshape(ring_rows, row)
    for i, r in enumerate([4, 5, 0, 1]):
        assert np.array_equal(ring[r], lin[i * row:(i + 1) * row])
    assert not ring[2].any() and not ring[3].any()
    assert np.array_equal(d.sram.read(0x400, 4 * row), lin)


# -- compute --------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,n,k,a_trans,b_trans,c_dtype", [
    (8, 8, 8, False, False, DType.FP32), (13, 7, 29, True, False, DType.FP32),
    (5, 17, 3, False, True, DType.BF16), (1, 1, 64, True, True, DType.FP32)])
def test_matmul_matches_golden_and_torch(m, n, k, a_trans, b_trans, c_dtype):
    s = System()
    d = s.devices[0]
    a = bf16(rng.standard_normal((m, k)))
    b = bf16(rng.standard_normal((k, n)))
    load(d, Space.SRAM, 0x0, a.T.copy() if a_trans else a)
    load(d, Space.SRAM, 0x4000, b.T.copy() if b_trans else b)
    run(s, {0: [Command("MATMUL", a=0, lda=m if a_trans else k, b=0x4000,
                        ldb=k if b_trans else n, c=0x8000, ldc=n, a_trans=a_trans,
                        b_trans=b_trans, c_dtype=c_dtype, m=m, n=n, k=k)]})
    golden = nx.matmul_bf16(a, b)
    if c_dtype == DType.BF16:
        golden = nx.fp32_to_bf16(golden)
        got = d.sram.read(0x8000, m * n * 2).view(np.uint16).reshape(m, n)
    else:
        got = d.sram.read(0x8000, m * n * 4).view(np.uint32).reshape(m, n)
    assert np.array_equal(got, golden)
    ref = torch.from_numpy(nx.bf16_to_fp32(a).view(np.float32)) @ \
        torch.from_numpy(nx.bf16_to_fp32(b).view(np.float32))
    val = nx.bf16_to_fp32(got).view(np.float32) if c_dtype == DType.BF16 else got.view(np.float32)
    assert np.allclose(val, ref.numpy(), rtol=1e-2, atol=1e-2)


def test_matmul_accumulates_into_fp32():
    s = System()
    d = s.devices[0]
    a, b = bf16(rng.standard_normal((4, 6))), bf16(rng.standard_normal((6, 3)))
    c0 = rng.standard_normal((4, 3)).astype(np.float32).view(np.uint32)
    load(d, Space.SRAM, 0, a)
    load(d, Space.SRAM, 0x100, b)
    load(d, Space.SRAM, 0x200, c0)
    run(s, {0: [Command("MATMUL", a=0, lda=6, b=0x100, ldb=3, c=0x200, ldc=3, acc=True,
                        m=4, n=3, k=6)]})
    assert np.array_equal(d.sram.read(0x200, 48).view(np.uint32).reshape(4, 3),
                          nx.matmul_bf16(a, b, c0))


@pytest.mark.parametrize("mode", list(VBMode))
def test_vector_operand_modes(mode):
    s = System()
    d = s.devices[0]
    rows, cols = 3, 5
    a = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32)
    b_full = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32)
    load(d, Space.SRAM, 0, a)
    load(d, Space.SRAM, 0x100, b_full)
    imm = int(np.float32(0.5).view(np.uint32))
    run(s, {0: [Command("VECTOR", op=VectorOp.MUL, dst=0x200, ldd=cols, a=0, lda=cols,
                        b=0x100, ldb=cols, b_mode=mode, imm=imm, rows=rows, cols=cols)]})
    flat = b_full.reshape(-1)
    b = {VBMode.TILE: b_full, VBMode.ROW: flat[:rows, None], VBMode.COL: flat[None, :cols],
         VBMode.SCALAR: flat[:1, None], VBMode.IMM: np.uint32(imm)}[mode]
    expect = nx.fp32_mul(a, np.broadcast_to(b, a.shape))
    assert np.array_equal(d.sram.read(0x200, rows * cols * 4).view(np.uint32).reshape(rows, cols),
                          expect)


@pytest.mark.parametrize("op", [op for op in VectorOp if op != VectorOp.SELECT])
def test_every_vector_op_matches_golden(op):
    s = System()
    d = s.devices[0]
    a = rng.standard_normal((2, 8)).astype(np.float32).view(np.uint32)
    b = rng.standard_normal((2, 8)).astype(np.float32).view(np.uint32)
    load(d, Space.SRAM, 0, a)
    load(d, Space.SRAM, 0x100, b)
    run(s, {0: [Command("VECTOR", op=op, dst=0x200, ldd=8, a=0, lda=8, b=0x100, ldb=8,
                        rows=2, cols=8)]})
    unary = op in (VectorOp.MOV, VectorOp.EXP, VectorOp.RECIP, VectorOp.RSQRT, VectorOp.SILU,
                   VectorOp.F2I, VectorOp.I2F, VectorOp.RND_BF16)
    expect = nx.vector_op(op, a, None if unary else b)
    assert np.array_equal(d.sram.read(0x200, 64).view(np.uint32).reshape(2, 8), expect)


def test_select_and_bf16_conversion():
    s = System()
    d = s.devices[0]
    a = rng.standard_normal((2, 4)).astype(np.float32).view(np.uint32)
    b = rng.standard_normal((2, 4)).astype(np.float32).view(np.uint32)
    m = np.where(rng.random((2, 4)) < 0.5, 0xFFFFFFFF, 0).astype(np.uint32)
    for addr, v in ((0, a), (0x100, b), (0x200, m)):
        load(d, Space.SRAM, addr, v)
    run(s, {0: [Command("VECTOR", op=VectorOp.SELECT, dst=0x300, ldd=4, a=0, lda=4, b=0x100,
                        ldb=4, c=0x200, rows=2, cols=4, d_dtype=DType.BF16)]})
    got = d.sram.read(0x300, 16).view(np.uint16).reshape(2, 4)
    assert np.array_equal(got, nx.fp32_to_bf16(np.where(m != 0, a, b)))


@pytest.mark.parametrize("op", list(RedOp))
def test_reduce_rows_sequential(op):
    s = System()
    d = s.devices[0]
    a = rng.standard_normal((5, 11)).astype(np.float32).view(np.uint32)
    load(d, Space.SRAM, 0, a)
    run(s, {0: [Command("REDUCE", op=op, dst=0x400, a=0, lda=11, rows=5, cols=11)]})
    acc = np.zeros(5, np.uint32) if op == RedOp.SUM else np.full(5, 0xFF800000, np.uint32)
    for j in range(11):
        acc = (nx.fp32_add if op == RedOp.SUM else nx.fp32_max)(acc, a[:, j])
    assert np.array_equal(d.sram.read(0x400, 20).view(np.uint32), acc)


def test_mask_causal_window_and_length():
    s = System()
    d = s.devices[0]
    rows, cols = 4, 8
    a = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32)
    load(d, Space.SRAM, 0, a)
    run(s, {0: [Command("MASK", dst=0x100, a=0, ld=cols, causal=True, q_shift=1, rows=rows,
                        cols=cols, q0=10, k0=6, klen=13, window=3)]})
    got = d.sram.read(0x100, rows * cols * 4).view(np.uint32).reshape(rows, cols)
    for i in range(rows):
        q = 10 + (i >> 1)
        for j in range(cols):
            k = 6 + j
            masked = k > q or k <= q - 3 or k >= 13
            assert got[i, j] == (0xFF800000 if masked else a[i, j]), (i, j)


# -- control, registers, semaphores ----------------------------------------------------------------

def test_registers_loop_and_dynamic_addresses():
    """A loop in a called stream copies n rows, the row count and addresses from registers."""
    s = System()
    d = s.devices[0]
    src = rng.integers(0, 256, 16 * 8, dtype=np.uint8)
    load(d, Space.DRAM, 0x2000, src)
    body = [
        Command("REG_SET", rd=10, imm=0),                                         # i = 0
        Command("DMA_COPY", engine=Engine.DMA_IN, src_reg=11, dst_reg=12, len=16, n1=1, n2=1),
        Command("REG_OP", op=RegOp.ADD, rd=11, rs1=11, imm=16),
        Command("REG_OP", op=RegOp.ADD, rd=12, rs1=12, imm=32),
        Command("REG_OP", op=RegOp.ADD, rd=10, rs1=10, imm=1),
        Command("BRANCH", cond=BranchCond.LTU, ra=10, rb=13, target=-4),
    ]
    run(s, {0: body}, regs={0: {11: 0x2000, 12: 0x6000, 13: 5}})
    out = d.dram.read(0x6000, 5 * 32).reshape(5, 32)
    assert np.array_equal(out[:, :16], src[:80].reshape(5, 16))
    assert not out[:, 16:].any()
    assert d.regs[10] == 5


def test_semaphores_order_engines():
    """compute waits for the load's signal; the store waits for compute's signal."""
    s = System()
    d = s.devices[0]
    x = rng.standard_normal(16).astype(np.float32).view(np.uint32)
    load(d, Space.DRAM, 0x2000, x)
    cmds = [
        Command("SEM_WAIT", engine=Engine.COMPUTE, sem=1, value=1, consume=True),
        Command("VECTOR", op=VectorOp.EXP, dst=0x100, ldd=16, a=0, lda=16, rows=1, cols=16),
        Command("SEM_SIGNAL", engine=Engine.COMPUTE, sem=2, amount=1),
        Command("SEM_WAIT", engine=Engine.DMA_OUT, sem=2, value=1, consume=True),
        copy(Space.SRAM, 0x100, Space.DRAM, 0x3000, 64, engine=Engine.DMA_OUT),
        copy(Space.DRAM, 0x2000, Space.SRAM, 0, 64),
        Command("SEM_SIGNAL", engine=Engine.DMA_IN, sem=1, amount=1),
    ]
    run(s, {0: cmds})
    assert np.array_equal(d.dram.read(0x3000, 64).view(np.uint32),
                          nx.vector_op(VectorOp.EXP, x))
    assert d.sems[1] == 0 and d.sems[2] == 0
    assert d.stats[Engine.COMPUTE].wait_cycles > 0


def test_dma_and_compute_overlap_in_time():
    s = System()
    big = copy(Space.DRAM, 0x2000, Space.SRAM, 0x10000, 32 * 1024)
    mm = Command("MATMUL", a=0, lda=64, b=0x2000, ldb=64, c=0x4000, ldc=64, m=64, n=64, k=64)
    run(s, {0: [big, mm]})
    st = s.devices[0].stats
    total = s.devices[0].last_activity
    assert total < st[Engine.DMA_IN].busy_cycles + st[Engine.COMPUTE].busy_cycles
    report = s.report()[0]
    assert report["engines"]["COMPUTE"]["macs"] == 64 ** 3
    assert 0 < report["engines"]["COMPUTE"]["mac_utilisation"] <= 1


# -- multi-device ----------------------------------------------------------------------------------

def test_peer_write_then_remote_signal():
    """Device 0 writes into device 1's DRAM over the link, then signals device 1's semaphore;
    device 1 waits, adds the received vector to its own and stores the sum."""
    s = System(2)
    d0, d1 = s.devices
    x0 = rng.standard_normal(8).astype(np.float32).view(np.uint32)
    x1 = rng.standard_normal(8).astype(np.float32).view(np.uint32)
    load(d0, Space.DRAM, 0x2000, x0)
    load(d1, Space.SRAM, 0, x1)
    peer_dram, peer_mmio = s.bus.dram(1), s.bus.mmio(1)
    sender = [
        Command("DMA_COPY", engine=Engine.LINK, src_off=0x2000, dst_space=Space.LINK,
                dst_reg=20, dst_off=0x5000, len=32, n1=1, n2=1),
        Command("SEM_SIGNAL", engine=Engine.LINK, sem=7, amount=1, remote=True, peer_reg=21),
    ]
    receiver = [
        Command("SEM_WAIT", engine=Engine.DMA_IN, sem=7, value=1, consume=True),
        copy(Space.DRAM, 0x5000, Space.SRAM, 0x100, 32),
        Command("FENCE"),
        Command("VECTOR", op=VectorOp.ADD, dst=0x200, ldd=8, a=0, lda=8, b=0x100, ldb=8,
                rows=1, cols=8),
    ]
    run(s, {0: sender, 1: receiver}, regs={0: {20: peer_dram, 21: peer_mmio}})
    assert np.array_equal(d1.sram.read(0x200, 32).view(np.uint32), nx.fp32_add(x1, x0))
    assert s.devices[1].stats[Engine.DMA_IN].wait_cycles >= s.params.link_latency


def test_completion_record_and_msi():
    s = System(2)
    run(s, {0: [Command("NOP")], 1: [Command("NOP")]})
    assert sorted(v for _, _, v in s.interrupts) == [0, 1]
    for dev in range(2):
        rec = s.host.read(s.bus.completion(dev), 16)
        seq, status = rec[:4].view("<u4")[0], rec[4:8].view("<u4")[0]
        assert seq == dev + 1 and status & 0xFF == DeviceState.RUNNING and status >> 8 == 0


def test_device_reads_host_memory():
    s = System()
    data = rng.integers(0, 256, 256, dtype=np.uint8)
    s.host.write(0x8000, data)
    run(s, {0: [copy(Space.LINK, 0x8000, Space.DRAM, 0x2000, 256, engine=Engine.LINK)]})
    assert np.array_equal(s.devices[0].dram.read(0x2000, 256), data)


# -- errors: each code provoked, nothing outside the faulting command written -----------------------

def expect_fault(s, code, device=0):
    with pytest.raises(DeviceError) as info:
        s.check()
    assert info.value.code == code and info.value.device == device
    d = s.devices[device]
    assert d.state == DeviceState.FAULT
    assert d.mmio_read(regmap.OFFSET["STATUS"]) >> 8 == code
    return info.value


def faulting_run(cmds, code, setup=None, n=1, device=0, regs=None):
    s = System(n)
    if setup:
        setup(s)
    run(s, {device: cmds}, regs=regs, expect_ok=False)
    return s, expect_fault(s, code, device)


def test_bad_opcode_reports_command_address():
    s = System()
    stream = bytearray(encode_stream([Command("NOP"), Command("NOP"), Command("HALT")]))
    stream[32 + 32] = 0xEE  # second command's opcode
    s.launch(0, bytes(stream), STREAM)
    s.run()
    err = expect_fault(s, ErrorCode.BAD_OPCODE)
    assert err.offset == STREAM + 32 + 32


def test_reserved_bits_and_bad_field():
    for word, code in ((Command("NOP").to_int() | 1 << 200, ErrorCode.RESERVED_BITS),
                       (Command("DMA_COPY").to_int() | int(Engine.COMPUTE) << 8, ErrorCode.BAD_FIELD)):
        s = System()
        stream = bytearray(encode_stream([Command("NOP")]))
        stream[32:64] = word.to_bytes(32, "little")
        s.launch(0, bytes(stream), STREAM)
        s.run()
        expect_fault(s, code)


@pytest.mark.parametrize("patch,code", [((0, b"XXXX"), ErrorCode.BAD_MAGIC),
                                        ((4, b"\x09"), ErrorCode.BAD_VERSION)])
def test_called_stream_header_is_checked(patch, code):
    s = System()
    stream = bytearray(encode_stream([Command("NOP")]))
    off, raw = patch
    stream[off:off + len(raw)] = raw
    s.launch(0, bytes(stream), STREAM)
    s.run()
    expect_fault(s, code)


def test_stream_running_past_dram_is_truncated():
    s = System()
    d = s.devices[0]
    stream = bytearray(encode_stream([Command("NOP")]))
    stream[8:12] = (1 << 30).to_bytes(4, "little")
    s.launch(0, bytes(stream), STREAM)
    s.run()
    expect_fault(s, ErrorCode.TRUNCATED_STREAM)
    assert d.error_offset == d.ring_base  # the CALL in the ring faulted


def test_dma_window_violation_writes_nothing():
    def restrict(s):
        s.grant(0, 0, 0, 0x8000, regmap.WINDOW_READ | regmap.WINDOW_WRITE)
        s.devices[0].dram.write(0x7000, b"\x55" * 0x2000)  # straddles the window end
        s.devices[0].sram.write(0, b"\xAA" * 0x2000)
    s, err = faulting_run([copy(Space.SRAM, 0, Space.DRAM, 0x7000, 0x1100,
                                engine=Engine.DMA_OUT)], ErrorCode.DMA_WINDOW, restrict)
    assert (s.devices[0].dram.read(0x7000, 0x2000) == 0x55).all()
    assert "outside every granted window" in str(err)


def test_link_window_violation():
    def restrict(s):
        s.grant(0, 3, 0, 0, 0)  # no peer DRAM access
    faulting_run([Command("DMA_COPY", engine=Engine.LINK, dst_space=Space.LINK, dst_reg=20,
                          len=32, n1=1, n2=1)], ErrorCode.DMA_WINDOW, restrict, n=2,
                 regs={0: {20: System(2).bus.dram(1)}})


def test_sram_bounds_and_alignment():
    size = System().params.sram_bytes
    faulting_run([copy(Space.DRAM, 0, Space.SRAM, size - 16, 32)], ErrorCode.SRAM_BOUNDS)
    faulting_run([Command("MATMUL", a=size - 8, lda=8, b=0, ldb=8, c=0x1000, ldc=8,
                          m=8, n=8, k=8)], ErrorCode.SRAM_BOUNDS)
    faulting_run([copy(Space.DRAM, 2, Space.SRAM, 0, 32)], ErrorCode.ALIGNMENT)
    faulting_run([Command("VECTOR", op=VectorOp.ADD, dst=2, a=0, rows=1, cols=1)],
                 ErrorCode.ALIGNMENT)


def test_block_table_outside_pool_writes_nothing():
    def setup(s):
        s.devices[0].dram.write(0x1000, np.array([1, 2, 9], "<u4").view(np.uint8))
        s.devices[0].sram.write(0, b"\x77" * 256)
    s, _ = faulting_run([Command("DMA_GATHER", engine=Engine.DMA_IN, table_off=0x1000,
                                 pool_off=0x40000, dst_space=Space.SRAM, row_bytes=16,
                                 row_stride=16, dst_stride=16, block_log2=1, pool_blocks=8,
                                 n=6)], ErrorCode.BLOCK_TABLE, setup)
    assert (s.devices[0].sram.read(0, 256) == 0x77).all()


def test_dma_extent_must_lie_in_one_window():
    """Checks are per operand extent: rows inside two adjacent windows still fault when the
    strided extent spans both, and a paged pool is checked whole, not block by block."""
    rw = regmap.WINDOW_READ | regmap.WINDOW_WRITE

    def two_windows(s):
        s.grant(0, 0, 0, 0x1000, rw)
        s.grant(0, 1, 0x1000, 0x1000, rw)
        s.devices[0].sram.write(0, b"\x66" * 64)
    s, _ = faulting_run([Command("DMA_COPY", engine=Engine.DMA_IN, src_off=0xF00,
                                 dst_space=Space.SRAM, len=32, n1=2, n2=1, src_stride1=0x200)],
                        ErrorCode.DMA_WINDOW, two_windows)
    assert (s.devices[0].sram.read(0, 64) == 0x66).all()

    def small_window(s):  # covers the blocks used (0, 1), not the whole pool of 8
        s.grant(0, 0, 0, 0x40000 + 64, rw)
        s.devices[0].dram.write(0x1000, np.array([0, 1], "<u4").view(np.uint8))
    faulting_run([Command("DMA_GATHER", engine=Engine.DMA_IN, table_off=0x1000,
                          pool_off=0x40000, dst_space=Space.SRAM, row_bytes=16, row_stride=16,
                          dst_stride=16, block_log2=1, pool_blocks=8, n=4)],
                 ErrorCode.DMA_WINDOW, small_window)


def test_dma_checks_in_order():
    """Alignment before shape before extents before block-table entries."""
    bad_table = dict(table_off=0x1000, pool_off=0x40000, row_stride=16, dst_stride=16,
                     block_log2=1, pool_blocks=2, n=2)

    def setup(s):
        s.devices[0].dram.write(0x1000, np.array([7], "<u4").view(np.uint8))
    # entry 7 is outside the pool, but the destination runs past SRAM: SRAM_BOUNDS first
    size = System().params.sram_bytes
    faulting_run([Command("DMA_GATHER", engine=Engine.DMA_IN, dst_space=Space.SRAM,
                          dst_off=size - 16, row_bytes=16, **bad_table)],
                 ErrorCode.SRAM_BOUNDS, setup)
    # ... and a misaligned row length comes before both
    faulting_run([Command("DMA_GATHER", engine=Engine.DMA_IN, dst_space=Space.SRAM,
                          dst_off=size - 16, row_bytes=18, **bad_table)],
                 ErrorCode.ALIGNMENT, setup)
    faulting_run([Command("DMA_GATHER", engine=Engine.DMA_IN, dst_space=Space.SRAM,
                          row_bytes=16, **bad_table)], ErrorCode.BLOCK_TABLE, setup)


def test_register_operand_must_fit_its_field():
    """R[reg] + imm for a count is carried at the immediate's width: too large is BAD_SHAPE."""
    faulting_run([Command("MATMUL", a=0, lda=8, b=0x100, ldb=8, c=0x200, ldc=8, m=8, n=8,
                          k_reg=3, k=1)], ErrorCode.BAD_SHAPE, regs={0: {3: 0xFFFF}})


def test_bad_shape_and_overlap():
    faulting_run([Command("DMA_RING", engine=Engine.DMA_IN, ring_rows=0, n=1, row_bytes=4)],
                 ErrorCode.BAD_SHAPE)
    faulting_run([Command("MATMUL", a=0, lda=8, b=0x100, ldb=8, c=0x200, ldc=8, acc=True,
                          c_dtype=DType.BF16, m=8, n=8, k=8)], ErrorCode.BAD_SHAPE)
    faulting_run([Command("MATMUL", a=0, lda=8, b=0x1000, ldb=8, c=0x40, ldc=8,
                          m=8, n=8, k=8)], ErrorCode.OPERAND_OVERLAP)


def _vector_in_place(**changes):
    """ADD of a 2 x 4 fp32 tile at 0x100 (row stride 8) with b at 0x400, dst in place."""
    fields = dict(op=VectorOp.ADD, dst=0x100, ldd=8, a=0x100, lda=8, b=0x400, ldb=8,
                  rows=2, cols=4)
    fields.update(changes)
    return Command("VECTOR", **fields)


def test_vector_and_mask_write_in_place():
    """dst may be exactly an operand (same address, row stride and element type): each element
    is read before it is written."""
    s = System()
    d = s.devices[0]
    a = rng.standard_normal((2, 8)).astype(np.float32).view(np.uint32)
    b = rng.standard_normal((2, 8)).astype(np.float32).view(np.uint32)
    load(d, Space.SRAM, 0x100, a)
    load(d, Space.SRAM, 0x400, b)
    run(s, {0: [_vector_in_place(),
                _vector_in_place(a=0x400, b=0x100),         # dst is b (TILE mode)
                Command("MASK", dst=0x100, a=0x100, ld=8, causal=True, rows=2, cols=4,
                        q0=0, k0=0, klen=4)]})
    got = d.sram.read(0x100, 64).view(np.uint32).reshape(2, 8)
    once = nx.fp32_add(a[:, :4], b[:, :4])
    twice = nx.fp32_add(b[:, :4], once)
    expect = np.where(np.arange(4)[None, :] > np.arange(2)[:, None], np.uint32(nx.NEG_INF),
                      twice)
    assert np.array_equal(got[:, :4], expect)
    assert np.array_equal(got[:, 4:], a[:, 4:])   # the padding is untouched


@pytest.mark.parametrize("changes", [
    dict(dst=0x104),                                # shifted by one element
    dict(ldd=9),                                    # another row stride
    dict(d_dtype=DType.BF16),                       # narrower result over the same bytes
    dict(a=0x400, b=0x100, b_mode=VBMode.ROW),     # b re-read across a row
    dict(a=0x400, b=0x110),                         # b partly under dst
    dict(op=VectorOp.SELECT, a=0x400, b=0x400, c=0x104),  # SELECT's mask partly under dst
])
def test_vector_overlap_not_in_place_faults(changes):
    faulting_run([_vector_in_place(**changes)], ErrorCode.OPERAND_OVERLAP)


def test_mask_overlap_not_in_place_faults():
    faulting_run([Command("MASK", dst=0x104, a=0x100, ld=8, rows=2, cols=4, klen=4)],
                 ErrorCode.OPERAND_OVERLAP)


def test_branch_and_call_errors():
    faulting_run([Command("BRANCH", target=5)], ErrorCode.BAD_BRANCH)
    faulting_run([Command("CALL", addr_off=STREAM)], ErrorCode.CALL_DEPTH)
    s = System()
    s.submit(0, [Command("BRANCH")])  # in the ring, not in a called stream
    s.run()
    expect_fault(s, ErrorCode.BAD_BRANCH)


def test_semaphore_deadlock_times_out_without_hanging():
    s = System(params=System().params.replace(watchdog_cycles=5000))
    run(s, {0: [Command("SEM_WAIT", engine=Engine.COMPUTE, sem=3, value=1),
                Command("SEM_WAIT", engine=Engine.DMA_IN, sem=4, value=1)]}, expect_ok=False)
    expect_fault(s, ErrorCode.SEM_TIMEOUT)
    assert s.kernel.now < 20_000


def test_link_down_is_a_completion_timeout():
    s = System(2)
    s.devices[1].link_up = False
    run(s, {0: [Command("DMA_COPY", engine=Engine.LINK, src_space=Space.LINK, src_reg=20,
                        dst_off=0x2000, len=64, n1=1, n2=1)]},
        regs={0: {20: s.bus.dram(1)}}, expect_ok=False)
    expect_fault(s, ErrorCode.LINK_TIMEOUT)
    assert s.kernel.now >= s.params.link_completion_timeout


def test_unmapped_bus_address_is_unsupported():
    s = System()
    s.grant(0, 4, 0x50_0000_0000, 0x1000, regmap.WINDOW_READ | regmap.WINDOW_LINK)
    run(s, {0: [copy(Space.LINK, 0, Space.DRAM, 0x2000, 64, engine=Engine.LINK,
                     src_reg=20)]}, regs={0: {20: 0x50_0000_0000}}, expect_ok=False)
    expect_fault(s, ErrorCode.LINK_UNSUPPORTED)


def test_posted_writes_nobody_claims_are_lost_not_reported():
    """As on PCIe: a write to an unclaimed bus address, or a remote signal to a device whose
    link is down, is dropped on the way; the writer goes on."""
    s = System(2)
    s.grant(0, 4, 0x50_0000_0000, 0x1000, regmap.WINDOW_WRITE | regmap.WINDOW_LINK)
    s.devices[1].link_up = False
    run(s, {0: [copy(Space.DRAM, 0x2000, Space.LINK, 0, 64, engine=Engine.LINK, dst_reg=20),
                Command("SEM_SIGNAL", engine=Engine.LINK, sem=2, amount=1, remote=True,
                        peer_reg=21)]},
        regs={0: {20: 0x50_0000_0000, 21: s.bus.mmio(1)}})
    assert (s.lost_writes.count, s.lost_writes.bytes) == (2, 64 + 8)
    assert s.devices[1].sems[2] == 0


def test_fault_stops_queue_until_reset():
    s = System()
    d = s.devices[0]
    run(s, {0: [Command("HALT", code=9)]}, expect_ok=False)  # halt: not an error
    s.check()
    assert d.state == DeviceState.HALTED and d.halt_code == 9
    d.mmio_write(regmap.OFFSET["CONTROL"], 1)
    d.sram.write(0, np.arange(8, dtype=np.uint32).view(np.uint8))
    run(s, {0: [copy(Space.SRAM, 0, Space.DRAM, 0x2000, 32, engine=Engine.DMA_OUT)]})
    assert np.array_equal(d.dram.read(0x2000, 32).view(np.uint32), np.arange(8))
    assert d.state == DeviceState.IDLE
