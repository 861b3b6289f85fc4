"""Device-level blocks around the NE tile: DMA engine (and later the command processor, the
register block and the device top)."""
