"""The compiler: a PyTorch decoder-only model -> one command stream per device.

``capture`` (torch.export -> :class:`~.graph.Graph` of our ops), ``reference`` (the graph in
numpy fp32), ``models`` (Hugging Face models from configurations, our own module, presets).
"""
