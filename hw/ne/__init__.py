"""The Neural Engine (NE) tile: systolic matrix unit, vector unit, scratchpad."""
