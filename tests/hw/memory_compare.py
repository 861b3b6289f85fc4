"""Comparing memory images, RTL against the functional model, for the cocotb testbenches."""

__all__ = ["first_difference"]


def first_difference(what, got, want, base):
    """Raise AssertionError naming the first differing byte of ``got`` (RTL) and ``want``
    (model), images of ``what`` at address ``base``, and how many bytes differ."""
    if got == want:
        return
    first = next(i for i in range(len(want)) if got[i] != want[i])
    count = sum(a != b for a, b in zip(got, want))
    raise AssertionError(f"{what} [{base:#x}, +{len(want):#x}) differs in {count} bytes, first "
                         f"at {base + first:#x}: RTL {got[first:first + 16].hex()} model "
                         f"{want[first:first + 16].hex()}")
