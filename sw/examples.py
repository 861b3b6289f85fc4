"""Small complete programs: command streams with their inputs and the expected result.

Used by ``npusim example`` (write a sample stream to disassemble), by the benchmarks and by
tests.
"""

from dataclasses import dataclass, field

import numpy as np

from . import numerics as nx
from .fm.system import BusMap
from .isa import Command, DType, Engine, Space, VectorOp, encode_stream

__all__ = ["Example", "gemm", "tp_linear", "EXAMPLES"]

STREAM_ADDR = 0x10_0000


@dataclass
class Example:
    """Streams per device, DRAM images per device, and a check of the result."""
    name: str
    description: str
    streams: dict                                  #: device -> list of Command
    dram: dict = field(default_factory=dict)       #: device -> {address: uint8 array}
    regs: dict = field(default_factory=dict)       #: device -> {register: value}
    outputs: dict = field(default_factory=dict)    #: name -> (device, address, shape, dtype)
    golden: dict = field(default_factory=dict)     #: name -> expected array (bit-exact)
    reference: dict = field(default_factory=dict)  #: name -> (float64 reference, error bound)

    def stream_bytes(self, device=0):
        return encode_stream(self.streams[device])

    def load(self, system):
        """Put inputs in place and launch every device's stream."""
        for dev, images in self.dram.items():
            for addr, data in images.items():
                system.devices[dev].dram.write(addr, data)
        for dev in self.streams:
            system.launch(dev, self.stream_bytes(dev), STREAM_ADDR, self.regs.get(dev))

    def read_outputs(self, system):
        out = {}
        for name, (dev, addr, shape, dtype) in self.outputs.items():
            n = int(np.prod(shape)) * np.dtype(dtype).itemsize
            out[name] = system.devices[dev].dram.read(addr, n).view(dtype).reshape(shape)
        return out


def _bf16(rng, shape):
    return nx.fp32_to_bf16(rng.standard_normal(shape).astype(np.float32).view(np.uint32))


def _as_f64(bits):
    return (nx.bf16_to_fp32(bits) if bits.dtype == np.uint16 else bits).view(np.float32) \
        .astype(np.float64)


def _reference(a, b):
    """float64 ``a @ b`` and the element-wise bound of an fp32-accumulated result against it.

    The bf16 products are exact in fp32 and K additions each round by at most 2**-24, so
    ``|fp32 result - exact| <= K * 2**-24 * (|a| @ |b|)`` (first order; 1 % margin).
    """
    a, b = _as_f64(a), _as_f64(b)
    return a @ b, a.shape[1] * 2.0 ** -24 * 1.01 * (np.abs(a) @ np.abs(b))


def _load(dram, sram, nbytes, engine=Engine.DMA_IN):
    return Command("DMA_COPY", engine=engine, src_space=Space.DRAM, src_off=dram,
                   dst_space=Space.SRAM, dst_off=sram, len=nbytes, n1=1, n2=1)


def _store(sram, dram, nbytes, engine=Engine.DMA_OUT):
    return Command("DMA_COPY", engine=engine, src_space=Space.SRAM, src_off=sram,
                   dst_space=Space.DRAM, dst_off=dram, len=nbytes, n1=1, n2=1)


def gemm(m=32, n=32, k=64, seed=0):
    """C = A x B on one device: load A and B into SRAM, MATMUL, store C (fp32)."""
    rng = np.random.default_rng(seed)
    a, b = _bf16(rng, (m, k)), _bf16(rng, (k, n))
    A, B, C = 0x0, 0x10000, 0x20000          # SRAM
    DA, DB, DC = 0x20_0000, 0x30_0000, 0x40_0000  # DRAM
    cmds = [
        _load(DA, A, a.nbytes),
        _load(DB, B, b.nbytes, engine=Engine.DMA_OUT),
        Command("FENCE"),
        Command("MATMUL", a=A, lda=k, b=B, ldb=n, c=C, ldc=n, m=m, n=n, k=k),
        Command("SEM_SIGNAL", engine=Engine.COMPUTE, sem=0, amount=1),
        Command("SEM_WAIT", engine=Engine.DMA_OUT, sem=0, value=1, consume=True),
        _store(C, DC, m * n * 4),
    ]
    return Example(
        "gemm", f"C[{m}x{n}] = A[{m}x{k}] x B[{k}x{n}] on one device", {0: cmds},
        dram={0: {DA: a.view(np.uint8), DB: b.view(np.uint8)}},
        outputs={"C": (0, DC, (m, n), np.uint32)},
        golden={"C": nx.matmul_bf16(a, b)},
        reference={"C": _reference(a, b)})


def tp_linear(devices=2, m=16, n=32, k=128, seed=0, bus=BusMap()):
    """A row-parallel linear layer Y = X W over ``devices`` devices, then an all-reduce.

    Device d holds X[:, Kd] and W[Kd, :] for its slice Kd of K, computes the partial product,
    writes it into every peer's DRAM over the link and signals the peer's semaphore; each device
    then sums all partials in device order, so every device ends with the same Y bit for bit.
    Peers are reached through run-time registers r16+p (peer p's DRAM BAR) and r24+p (its
    MMIO BAR), as the host assigned them in ``bus``.
    """
    if k % devices:
        raise ValueError("k must split evenly across devices")
    rng = np.random.default_rng(seed)
    x, w = _bf16(rng, (m, k)), _bf16(rng, (k, n))
    ks = k // devices
    X, W, P, ACC = 0x0, 0x10000, 0x20000, 0x30000          # SRAM
    DX, DW, DY = 0x20_0000, 0x30_0000, 0x40_0000           # DRAM
    INBOX = 0x50_0000                                       # DRAM: partials from every device
    part = m * n * 4
    streams, dram, regs, partials = {}, {}, {}, []
    for d in range(devices):
        xs = np.ascontiguousarray(x[:, d * ks:(d + 1) * ks])
        ws = np.ascontiguousarray(w[d * ks:(d + 1) * ks])
        partials.append(nx.matmul_bf16(xs, ws))
        dram[d] = {DX: xs.view(np.uint8), DW: ws.view(np.uint8)}
        cmds = [
            _load(DX, X, xs.nbytes),
            _load(DW, W, ws.nbytes, engine=Engine.DMA_OUT),
            Command("FENCE"),
            Command("MATMUL", a=X, lda=ks, b=W, ldb=n, c=P, ldc=n, m=m, n=n, k=ks),
            Command("SEM_SIGNAL", engine=Engine.COMPUTE, sem=1, amount=1),
            Command("SEM_WAIT", engine=Engine.LINK, sem=1, value=1, consume=True),
        ]
        # all-gather of the partials: own copy locally, peers' copies over the link
        for peer in range(devices):
            slot = INBOX + d * part
            if peer == d:
                cmds.append(_store(P, slot, part, engine=Engine.LINK))
                cmds.append(Command("SEM_SIGNAL", engine=Engine.LINK, sem=2, amount=1))
                continue
            regs.setdefault(d, {}).update({16 + peer: bus.dram(peer), 24 + peer: bus.mmio(peer)})
            cmds.append(Command("DMA_COPY", engine=Engine.LINK, src_space=Space.SRAM,
                                src_off=P, dst_space=Space.LINK, dst_reg=16 + peer,
                                dst_off=slot, len=part, n1=1, n2=1))
            cmds.append(Command("SEM_SIGNAL", engine=Engine.LINK, sem=2, amount=1, remote=True,
                                peer_reg=24 + peer))
        cmds += [Command("SEM_WAIT", engine=Engine.DMA_IN, sem=2, value=devices, consume=True),
                 Command("DMA_COPY", engine=Engine.DMA_IN, src_space=Space.DRAM, src_off=INBOX,
                         dst_space=Space.SRAM, dst_off=ACC, len=devices * part, n1=1, n2=1),
                 Command("FENCE")]
        for j in range(1, devices):  # Y = P0 + P1 + ... in device order
            cmds.append(Command("VECTOR", op=VectorOp.ADD, dst=ACC, ldd=n, a=ACC, lda=n,
                                b=ACC + j * part, ldb=n, rows=m, cols=n, a_dtype=DType.FP32))
        cmds += [Command("SEM_SIGNAL", engine=Engine.COMPUTE, sem=3, amount=1),
                 Command("SEM_WAIT", engine=Engine.DMA_OUT, sem=3, value=1, consume=True),
                 _store(ACC, DY, part)]
        streams[d] = cmds
    y = partials[0]
    for p_ in partials[1:]:
        y = nx.fp32_add(y, p_)
    return Example(
        "tp-linear", f"row-parallel Y[{m}x{n}] = X[{m}x{k}] W[{k}x{n}] on {devices} devices "
        "with an all-gather of partial sums over the link", streams, dram=dram, regs=regs,
        outputs={f"Y{d}": (d, DY, (m, n), np.uint32) for d in range(devices)},
        golden={f"Y{d}": y for d in range(devices)},
        reference={f"Y{d}": _reference(x, w) for d in range(devices)})


EXAMPLES = {"gemm": gemm, "tp-linear": tp_linear}
