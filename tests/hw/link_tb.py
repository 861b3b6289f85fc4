"""Testbench helpers for TLP streams (``tlp.tlp_beat``) in Amaranth's simulator: send and
receive whole TLPs as bytes, with random stalls."""

import random

from npusim.hw.link.tlp import to_beats

beats = to_beats     # (data, dws, last) of each beat of TLP bytes ``raw``


async def send_tlp(ctx, port, raw, width, rng=None, stall=0.0):
    """Drive TLP bytes ``raw`` into stream ``port``; idle cycles with probability ``stall``."""
    rng = rng or random.Random(0)
    for data, dws, last in beats(raw, width):
        while rng.random() < stall:
            ctx.set(port.valid, 0)
            await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(port.payload, {"data": data, "dws": dws, "last": last})
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def recv_tlp(ctx, port, width, rng=None, stall=0.0, limit=10_000):
    """Take one TLP from stream ``port`` and return its bytes; at most ``limit`` cycles."""
    rng = rng or random.Random(0)
    raw = bytearray()
    for _ in range(limit):
        ready = rng.random() >= stall
        ctx.set(port.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if ready and valid:
            raw += payload.data.to_bytes(width, "little")[:4 * payload.dws]
            if payload.last:
                ctx.set(port.ready, 0)
                return bytes(raw)
    raise TimeoutError(f"no whole TLP within {limit} cycles")
