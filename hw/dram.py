"""The device DRAM, for simulation: an AXI slave port in front of a SystemVerilog array.

A DRAM-sized Amaranth memory cannot be converted (64 MiB would need gigabytes of Yosys
memory), so the model is hand-written SystemVerilog (``cosim/dram_model.sv``, module
``npusim_dram``) and this component only instantiates it. The instance carries the path of its
source as the :data:`VERILOG_SOURCE_ATTR` attribute; :func:`npusim.cosim.verilator_flow.build`
finds it in the netlist and compiles the file with the design, wherever the component sits in
the hierarchy. See ``docs/hw/dram.md``.
"""

from pathlib import Path

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import AxiParams, AxiSignature

__all__ = ["DramModel", "DramBackdoorSignature", "VERILOG_SOURCE", "VERILOG_SOURCE_ATTR",
           "DEFAULT_HEXFILE"]

#: The SystemVerilog model (shipped with the package as ``npusim.cosim`` data).
VERILOG_SOURCE = Path(__file__).resolve().parent.parent / "cosim" / "dram_model.sv"

#: Instance attribute naming a hand-written Verilog file the instance's module lives in.
VERILOG_SOURCE_ATTR = "npusim_verilog_source"

#: Backdoor file, relative to the simulator's working directory (a run's results directory).
DEFAULT_HEXFILE = "npusim_dram.hex"


class DramBackdoorSignature(wiring.Signature):
    """The DRAM model's backdoor, as seen by the testbench that drives it (flip for the model).

    Members
    -------
    load : ``Out(1)``
        One-cycle pulse: read ``words`` beats from the hex file into the array from beat
        ``addr`` on (``$readmemh``), at the rising edge that samples it.
    dump : ``Out(1)``
        One-cycle pulse: write beats ``addr .. addr + words - 1`` to the hex file
        (``$writememh``).
    addr : ``Out(32)``
        First beat (byte address / ``data_bytes``).
    words : ``Out(32)``
        Number of beats.
    count : ``In(8)``
        Backdoor operations done, modulo 256: increments at the edge that ran one.
    """

    def __init__(self):
        super().__init__({
            "load": Out(1),
            "dump": Out(1),
            "addr": Out(32),
            "words": Out(32),
            "count": In(8),
        })


class DramModel(wiring.Component):
    """The device DRAM (simulation only): ``params.dram_bytes`` behind one AXI slave port.

    One beat of ``params.dram_bytes_per_cycle`` bytes per cycle on R and on W; the first beat
    of a read ``params.dram_latency`` cycles after its AR; ``outstanding`` read bursts and
    ``outstanding`` write bursts accepted before AR/AW stall. Addresses past ``dram_bytes``
    answer DECERR, misaligned or 4 KiB-crossing bursts SLVERR.

    Parameters
    ----------
    params : HwParams
    hexfile : str
        The backdoor's file, relative to the simulator's working directory (or absolute). Part
        of the netlist, so a fixed relative name keeps builds cacheable.
    id_width : int
        AXI ID bits.
    outstanding : int
        Read bursts, and write bursts, in flight at once.
    addr_width : int, optional
        Byte address bits of the port; by default just enough for ``dram_bytes``. Wider ports
        see DECERR above the memory.

    Members
    -------
    axi : ``In(AxiSignature(...))``
        The slave port.
    backdoor : ``In(DramBackdoorSignature())``
        Image load and dump through a hex file (``npusim.cosim.dram``).
    """

    def __init__(self, params, *, hexfile=DEFAULT_HEXFILE, id_width=4, outstanding=8,
                 addr_width=None):
        data_bytes = params.dram_bytes_per_cycle
        if params.dram_bytes % data_bytes:
            raise ValueError(f"dram_bytes ({params.dram_bytes}) is not a whole number of "
                             f"{data_bytes}-byte beats")
        if params.dram_latency < 1:
            raise ValueError(f"dram_latency must be at least 1, not {params.dram_latency}")
        if outstanding < 1:
            raise ValueError(f"outstanding must be at least 1, not {outstanding}")
        needed = (params.dram_bytes - 1).bit_length()
        if addr_width is None:
            addr_width = needed
        elif addr_width < needed:
            raise ValueError(f"addr_width {addr_width} cannot address {params.dram_bytes} bytes")
        self.axi_params = AxiParams(addr_width=addr_width, data_bytes=data_bytes,
                                    id_width=id_width)
        self.words = params.dram_bytes // data_bytes
        self.latency = params.dram_latency
        self.outstanding = outstanding
        self.hexfile = str(hexfile)
        super().__init__({
            "axi": In(AxiSignature(self.axi_params)),
            "backdoor": In(DramBackdoorSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        p, axi, backdoor = self.axi_params, self.axi, self.backdoor
        m.submodules.dram = Instance(
            "npusim_dram",
            ("a", VERILOG_SOURCE_ATTR, str(VERILOG_SOURCE)),
            p_ADDR_WIDTH=p.addr_width,
            p_DATA_BYTES=p.data_bytes,
            p_ID_WIDTH=p.id_width,
            p_WORDS=self.words,
            p_LATENCY=self.latency,
            p_OUTSTANDING=self.outstanding,
            p_HEXFILE=self.hexfile,
            i_clk=ClockSignal(),
            i_rst=ResetSignal(),
            i_ar_valid=axi.ar.valid, o_ar_ready=axi.ar.ready,
            i_ar_addr=axi.ar.payload.addr, i_ar_len=axi.ar.payload.len,
            i_ar_id=axi.ar.payload.id,
            o_r_valid=axi.r.valid, i_r_ready=axi.r.ready,
            o_r_data=axi.r.payload.data, o_r_resp=axi.r.payload.resp,
            o_r_last=axi.r.payload.last, o_r_id=axi.r.payload.id,
            i_aw_valid=axi.aw.valid, o_aw_ready=axi.aw.ready,
            i_aw_addr=axi.aw.payload.addr, i_aw_len=axi.aw.payload.len,
            i_aw_id=axi.aw.payload.id,
            i_w_valid=axi.w.valid, o_w_ready=axi.w.ready,
            i_w_data=axi.w.payload.data, i_w_strb=axi.w.payload.strb,
            i_w_last=axi.w.payload.last,
            o_b_valid=axi.b.valid, i_b_ready=axi.b.ready,
            o_b_resp=axi.b.payload.resp, o_b_id=axi.b.payload.id,
            i_bd_load=backdoor.load, i_bd_dump=backdoor.dump,
            i_bd_addr=backdoor.addr, i_bd_words=backdoor.words,
            o_bd_count=backdoor.count,
        )
        return m
