"""The runtime's ``rtl`` backend (``cosim/rtl_backend.py``, ``cosim/cluster_server.py``): the
serving engine and the cluster API on the Verilated 2-device system, driven over the link,
with the functional model's results. One simulator session (building the system's Verilog
to find its cached Verilator build takes most of a minute)."""

import numpy as np
import pytest

from npusim.sw.fm.system import DeviceError
from npusim.sw.isa import Command
from npusim.sw.isa.enums import Engine, ErrorCode, Space
from npusim.sw.runtime.engine import LLM, SamplingParams

pytestmark = [pytest.mark.rtl, pytest.mark.slow]   # make sim SMALL=1 runs the engine on the RTL in the default suite


def test_engine_and_cluster_on_the_rtl():
    """Greedy tokens on the RTL are the functional model's, in cycles within 15 % of its
    estimate; then, on the same cluster, launches on both devices, a fault raised with its
    code and command address, a reset and a launch after it."""
    kw = dict(tp=2, max_context=32, kv_blocks=8, prompt_buckets=[16], max_num_seqs=1)
    prompt, params = "We hold", SamplingParams(max_tokens=3)
    with LLM("tiny-trained", backend="rtl", **kw) as rtl:
        got = rtl.generate(prompt, params)[0]
        rtl_cycles = dict(rtl.model.cycles)
        c = rtl.cluster
        src, dst = c.alloc(0, 256), c.alloc(0, 256)
        c.upload(src, np.arange(64, dtype=np.uint32))
        copy = Command("DMA_COPY", engine=Engine.DMA_IN, src_space=Space.DRAM,
                       src_off=src.addr, dst_space=Space.DRAM, dst_off=dst.addr, len=256,
                       n1=1, n2=1)
        s0, s1 = c.load_stream(0, [copy]), c.load_stream(1, [Command("NOP")])
        cycles = c.wait(c.launch({0: s0, 1: s1}))
        assert set(cycles) == {0, 1} and all(v > 0 for v in cycles.values())
        assert c.download(dst, np.uint32).tolist() == list(range(64))
        bad = c.load_stream(0, [Command("NOP"), copy.replace(dst_space=Space.SRAM,
                                                             dst_off=c.params.sram_bytes)])
        with pytest.raises(DeviceError) as err:
            c.run({0: bad})
        assert err.value.code == ErrorCode.SRAM_BOUNDS and err.value.offset == bad.addr + 64
        c.reset(0)
        assert c.run({0: s0}) > 0
        rtl_params = c.params
    with LLM("tiny-trained", params=rtl_params, **kw) as fm:
        want = fm.generate(prompt, params)[0]
        fm_cycles = dict(fm.model.cycles)
    assert got.token_ids == want.token_ids and len(got.token_ids) == 3
    print(f"RTL {rtl_cycles}, functional model {fm_cycles}")
    for phase, cycles in fm_cycles.items():
        assert abs(rtl_cycles[phase] - cycles) <= 0.15 * cycles, phase
