"""The device around the NE tile: command fetcher, decoder and processor, engine heads and
semaphores, DMA engine, arbiters and the device top (``docs/hw/device.md``)."""
