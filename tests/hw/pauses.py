"""Pause generators for stream testbenches: every stream test also runs with idle cycles and
back-pressure, so handshake bugs show up there and not only in the happy path."""

__all__ = ["pauses", "never"]


def pauses(rng, busy, *, longest=24):
    """True for a cycle with no valid (or no ready): stretches of 4 to ``longest`` cycles,
    each calm, half busy or ``busy``."""
    while True:
        probability = rng.choice([0.0, busy / 2, busy])
        for _ in range(rng.randint(4, longest)):
            yield rng.random() < probability


def never():
    """A generator that never pauses."""
    while True:
        yield False
