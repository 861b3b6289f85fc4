"""The NE tile's scratchpad SRAM: banked, with a compute port and a DMA port.

The scratchpad is ``banks`` simple dual-port memories (one read and one write port each) of
``word_bytes``-wide words. Bank ``b`` holds the contiguous word range
``[b * bank_words, (b + 1) * bank_words)``, so a kernel double-buffers by putting the buffer the
DMA fills and the buffer the NE computes on in different banks: each bank serves one read and
one write per cycle, and the two ports only wait for each other when they want the same bank
in the same cycle (the compute port wins; the DMA port's request waits).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..refuse import refuse

__all__ = ["ScratchpadPort", "Scratchpad"]


class ScratchpadPort(wiring.Signature):
    """One requester's view of the scratchpad (directions as seen by the requester).

    Members
    -------
    rd_addr : ``Out(stream.Signature(addr_width))``
        Read request: a word address. Accepted when ``ready``.
    rd_data : ``In(stream.Signature(word_bits, always_ready=True))``
        Read response, exactly one cycle after the request was accepted, in request order.
        The requester must take it (no back-pressure): it issues only requests it can absorb.
    wr : ``Out(stream.Signature(WriteLayout))``
        Write: ``addr``, ``data`` and ``mask`` (one bit per byte of the word). Accepted when
        ``ready``; visible to reads accepted in later cycles.
    """

    def __init__(self, addr_width, word_bytes):
        self.addr_width, self.word_bytes = addr_width, word_bytes
        write = data.StructLayout({"addr": addr_width, "data": 8 * word_bytes,
                                   "mask": word_bytes})
        super().__init__({
            "rd_addr": Out(stream.Signature(addr_width)),
            "rd_data": In(stream.Signature(8 * word_bytes, always_ready=True)),
            "wr": Out(stream.Signature(write)),
        })

    def __eq__(self, other):
        return (isinstance(other, ScratchpadPort) and
                (self.addr_width, self.word_bytes) == (other.addr_width, other.word_bytes))

    def __repr__(self):
        return f"ScratchpadPort({self.addr_width}, {self.word_bytes})"


class Scratchpad(wiring.Component):
    """Banked scratchpad with two requester ports.

    Parameters
    ----------
    size_bytes : int
        Total size (a power of two, ``banks * word_bytes`` at least).
    banks : int
        Number of banks (a power of two); bank ``b`` holds word addresses
        ``[b * bank_words, (b + 1) * bank_words)``.
    word_bytes : int
        Width of one word (a power of two); one word per port per cycle.

    Members
    -------
    compute : ``In(ScratchpadPort)``
        The NE tile's port; it wins every bank conflict.
    dma : ``In(ScratchpadPort)``
        The DMA engines' port; a request that conflicts with the compute port on the same bank
        waits (``ready`` low) until the bank is free.
    """

    def __init__(self, size_bytes=256 * 1024, banks=8, word_bytes=32):
        problem = next((f"{name} must be a power of two, not {v}" for name, v in
                        (("size_bytes", size_bytes), ("banks", banks), ("word_bytes", word_bytes))
                        if v < 1 or v & (v - 1)), None)
        if problem is None and size_bytes < banks * word_bytes:
            problem = f"{size_bytes} bytes cannot hold {banks} banks of {word_bytes}-byte words"
        if problem:
            refuse(self, ValueError(problem))
        self.size_bytes, self.banks, self.word_bytes = size_bytes, banks, word_bytes
        self.words = size_bytes // word_bytes
        self.bank_words = self.words // banks
        addr_width = (self.words - 1).bit_length()
        port = ScratchpadPort(addr_width, word_bytes)
        super().__init__({"compute": In(port), "dma": In(port)})

    def _bank(self, addr):
        return addr[(self.bank_words - 1).bit_length():] if self.banks > 1 else 0

    def _row(self, addr):
        return addr[:(self.bank_words - 1).bit_length()]

    def _arbitrate(self, m, kind, request, address):
        """Grant one kind of request (reads or writes) per bank: the compute port always, the
        DMA port when the compute port does not want the same bank. Yields
        ``(port name, granted, bank)``."""
        banks = {}
        for name in ("compute", "dma"):
            bank = Signal(range(self.banks), name=f"{name}_{kind}_bank")
            m.d.comb += bank.eq(self._bank(address(getattr(self, name))))
            banks[name] = bank
        compute, dma = request(self.compute), request(self.dma)
        dma_free = Signal(name=f"dma_{kind}_free")
        m.d.comb += [dma_free.eq(~(compute.valid & (banks["compute"] == banks["dma"]))),
                     compute.ready.eq(1),
                     dma.ready.eq(dma_free)]
        for name, stream_, ready in (("compute", compute, 1), ("dma", dma, dma_free)):
            granted = Signal(name=f"{name}_{kind}_granted")
            m.d.comb += granted.eq(stream_.valid & ready)
            yield name, granted, banks[name]

    def elaborate(self, platform):
        m = Module()
        reads = []   # per bank: its read port
        writes = []
        for b in range(self.banks):
            mem = memory.Memory(shape=8 * self.word_bytes, depth=self.bank_words, init=[])
            m.submodules[f"bank{b}"] = mem
            reads.append(mem.read_port())
            writes.append(mem.write_port(granularity=8))

        # Reads: each port's request goes to its bank's read port; the data comes back one
        # cycle later from the bank recorded with the request.
        for name, granted, bank in self._arbitrate(m, "rd", lambda p: p.rd_addr,
                                                    lambda p: p.rd_addr.payload):
            port = getattr(self, name)
            with m.Switch(bank):
                for b in range(self.banks):
                    with m.Case(b):
                        with m.If(granted):
                            m.d.comb += [reads[b].addr.eq(self._row(port.rd_addr.payload)),
                                         reads[b].en.eq(1)]
            resp_bank = Signal.like(bank, name=f"{name}_rd_resp_bank")
            m.d.sync += [port.rd_data.valid.eq(granted), resp_bank.eq(bank)]
            with m.Switch(resp_bank):
                for b in range(self.banks):
                    with m.Case(b):
                        m.d.comb += port.rd_data.payload.eq(reads[b].data)

        for name, granted, bank in self._arbitrate(m, "wr", lambda p: p.wr,
                                                    lambda p: p.wr.payload.addr):
            port = getattr(self, name)
            with m.Switch(bank):
                for b in range(self.banks):
                    with m.Case(b):
                        with m.If(granted):
                            m.d.comb += [writes[b].addr.eq(self._row(port.wr.payload.addr)),
                                         writes[b].data.eq(port.wr.payload.data),
                                         writes[b].en.eq(port.wr.payload.mask)]
        return m
