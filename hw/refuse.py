"""Refusing bad component parameters cleanly."""

__all__ = ["refuse"]


def refuse(component, error):
    """Raise ``error`` from ``component``'s constructor.

    Amaranth warns about every elaboratable that is created and never elaborated; a component
    whose constructor refused its parameters was never meant to be, so it is silenced first
    (otherwise the warning surfaces, as an error, in whichever test happens to collect it).
    """
    component._MustUse__silence = True
    raise error
