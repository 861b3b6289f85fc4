"""The runtime on the functional backend: the cluster API (memory, launches, errors) and the
serving engine (continuous batching over the paged KV cache) against Hugging Face's
``generate`` on the trained test checkpoint."""

import numpy as np
import pytest
import torch

from npusim.sw.compiler.models import build_model
from npusim.sw.compiler.train import encode
from npusim.sw.fm.system import DeviceError
from npusim.sw.isa import Command, encode_stream
from npusim.sw.isa.enums import Engine, ErrorCode, Space
from npusim.sw.runtime.cluster import Cluster, OutOfDeviceMemory
from npusim.sw.runtime.engine import LLM, SamplingParams

PROMPTS = ["We hold these truths", "Four score and seven years ago our fathers",
           "When in the Course of human events, it becomes necessary", "Liberty"]


@pytest.fixture(scope="module")
def hf():
    return build_model("tiny-trained")


def hf_greedy(hf, prompt, n):
    ids = torch.tensor([encode(prompt) if isinstance(prompt, str) else prompt])
    out = hf.generate(ids, max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


# -- the cluster API ---------------------------------------------------------------------------

def test_memory_upload_download_numpy_and_torch():
    with Cluster(2) as c:
        a = c.alloc(1, 4096)
        b = c.alloc(1, 100)
        assert b.addr >= a.addr + 4096 and b.addr % 64 == 0
        x = np.arange(1024, dtype=np.float32)
        c.upload(a, x)
        assert np.array_equal(c.download(a, np.float32), x)
        c.upload(b, torch.arange(25, dtype=torch.int32))
        assert c.download(b, np.int32).tolist() == list(range(25))
        with pytest.raises(ValueError, match="overflow"):
            c.upload(b, np.zeros(26, np.int32))
        c.free(a)
        assert c.alloc(1, 4096).addr == a.addr             # first fit reuses the hole
        with pytest.raises(OutOfDeviceMemory):
            c.alloc(0, c.params.dram_bytes)
        with pytest.raises(ValueError, match="devices 0 .. 1"):
            c.alloc(2, 64)


def test_launch_runs_streams_and_faults_are_exceptions():
    """A copy on each device completes with its cycles; a DMA outside the device's SRAM is a
    DeviceError with the code and the faulting command's address; after a reset the device
    runs again."""
    with Cluster(2) as c:
        src, dst = c.alloc(0, 256), c.alloc(0, 256)
        c.upload(src, np.arange(64, dtype=np.uint32))
        copy = Command("DMA_COPY", engine=Engine.DMA_IN, src_space=Space.DRAM,
                       src_off=src.addr, dst_space=Space.DRAM, dst_off=dst.addr, len=256,
                       n1=1, n2=1)
        s0 = c.load_stream(0, [copy])
        s1 = c.load_stream(1, [Command("NOP")])
        cycles = c.wait(c.launch({0: s0, 1: s1}))
        assert set(cycles) == {0, 1} and all(v > 0 for v in cycles.values())
        assert c.download(dst, np.uint32).tolist() == list(range(64))
        bad = c.load_stream(0, [Command("NOP"), copy.replace(dst_space=Space.SRAM,
                                                             dst_off=c.params.sram_bytes)])
        with pytest.raises(DeviceError) as err:
            c.run({0: bad})
        assert err.value.code == ErrorCode.SRAM_BOUNDS and err.value.device == 0
        assert err.value.offset == bad.addr + 32 + 32      # header, then the second command
        c.reset(0)
        assert c.run({0: s0}) > 0


def test_run_time_registers_reach_the_stream():
    with Cluster(1) as c:
        src, dst = c.alloc(0, 64), c.alloc(0, 64)
        c.upload(src, np.arange(16, dtype=np.uint32))
        stream = c.load_stream(0, [Command("DMA_COPY", engine=Engine.DMA_IN,
                                           src_space=Space.DRAM, src_reg=5, src_off=0,
                                           dst_space=Space.DRAM, dst_off=dst.addr, len=64,
                                           n1=1, n2=1)])
        c.run({0: stream}, regs={0: {5: src.addr}})
        assert c.download(dst, np.uint32).tolist() == list(range(16))
        assert encode_stream([Command("NOP")])        # (streams are plain bytes too)


# -- the engine --------------------------------------------------------------------------------

@pytest.mark.parametrize("tp", [1, 2])
def test_batch_arriving_over_time_matches_hf(hf, tp):
    """Four prompts of 7 to 57 bytes, arriving at different cycles while others decode,
    greedy for 20 tokens with up to 3 sequences in a batch: token-identical to HF per
    prompt."""
    with LLM("tiny-trained", tp=tp, max_context=128, max_num_seqs=3) as llm:
        arrivals = [0, 0, 200_000, 600_000]
        outs = llm.generate(PROMPTS, SamplingParams(max_tokens=20), arrivals=arrivals)
        assert llm.steps["prefill"] >= 2 and llm.steps["decode"] >= 20
    for prompt, out, arrival in zip(PROMPTS, outs, arrivals):
        assert out.token_ids == hf_greedy(hf, prompt, 20), prompt
        assert out.finish_reason == "length" and out.first_token >= arrival
    assert outs[0].text == " to be self-evident, that al"[:len(outs[0].text)]


def test_preemption_and_prefix_sharing_give_the_same_tokens(hf):
    """A KV cache of 7 usable blocks for three sequences growing to 3-6 blocks each: they are
    preempted and recomputed; a prompt sharing two full blocks with an earlier one reuses
    them. Every sequence's tokens are HF's."""
    shared = "We hold these truths to be self-evident, that all men are"   # 57 bytes
    prompts = [shared, shared + " created equal", PROMPTS[1]]
    with LLM("tiny-trained", tp=2, max_context=128, kv_blocks=8, max_num_seqs=3,
             prompt_buckets=[16, 32, 64]) as llm:
        outs = llm.generate(prompts, SamplingParams(max_tokens=24))
        for kv in llm.kv.values():
            kv.check()
            assert kv.num_free_blocks == kv.num_usable_blocks     # nothing leaked
    assert sum(o.preemptions for o in outs) > 0
    assert outs[1].cached_tokens >= 48
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(hf, prompt, 24), prompt


def test_bad_requests_are_rejected_and_the_rest_served(hf):
    with LLM("tiny-trained", tp=1, max_context=64, kv_blocks=4) as llm:
        outs = llm.generate(["x" * 64, "", "We hold these truths", [300]],
                            SamplingParams(max_tokens=4))
        big = llm.generate(["y" * 60], SamplingParams(max_tokens=2))[0]
    assert [o.finish_reason for o in outs] == ["rejected", "rejected", "length", "rejected"]
    assert "64 positions" in outs[0].error and "empty" in outs[1].error
    assert "0 .. 255" in outs[3].error
    assert outs[2].token_ids == hf_greedy(hf, "We hold these truths", 4)
    assert big.finish_reason == "rejected" and "KV blocks" in big.error


def test_sampling_stop_and_streaming(hf):
    with LLM("tiny-trained", tp=1, max_context=64) as llm:
        p = SamplingParams(max_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=7)
        a = llm.generate("Four score", p)[0]
        b = llm.generate("Four score", p)[0]
        assert a.token_ids == b.token_ids                       # seeded
        greedy = llm.generate("Four score", SamplingParams(max_tokens=12))[0]
        top1 = llm.generate("Four score", SamplingParams(max_tokens=12, temperature=1.0,
                                                         top_k=1))[0]
        assert top1.token_ids == greedy.token_ids
        stopped = llm.generate("We hold these truths",
                               SamplingParams(max_tokens=20, stop=("evident",)))[0]
        assert stopped.finish_reason == "stop" and stopped.text == " to be self-"
        pieces = list(llm.stream(["Liberty"], SamplingParams(max_tokens=6)))
    assert [e.token_id for e in pieces] == pieces[-1].output.token_ids
    assert "".join(e.text for e in pieces) == pieces[-1].output.text
    assert pieces[-1].finished and not any(e.finished for e in pieces[:-1])


def test_prefix_hit_too_near_the_end_of_the_context(hf):
    """A prompt whose cached prefix leaves no room for a padded extend bucket before the end
    of the context is recomputed from the start, with HF's tokens."""
    first = "We hold these truths to be self-evident, that all men are created"   # 65 bytes
    second = first[:48] + "the pursuit"                                           # 59 bytes
    with LLM("tiny-trained", tp=1, max_context=64, prompt_buckets=[32, 64]) as llm:
        llm.generate(first[:50], SamplingParams(max_tokens=1))
        out = llm.generate(second, SamplingParams(max_tokens=4))[0]
    assert out.cached_tokens == 48
    assert out.token_ids == hf_greedy(hf, second, 4)


def test_bad_engine_configurations_are_refused():
    with pytest.raises(ValueError, match="query heads 4 do not split evenly over TP = 8"):
        LLM("tiny-llama", tp=8)
    with pytest.raises(ValueError, match="max_num_seqs = 20: 1 to 16"):
        LLM("tiny-trained", max_num_seqs=20)
