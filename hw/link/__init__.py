"""The PCIe-like link: transaction layer, data-link layer, physical model and switch
(``docs/hw/link.md``)."""
