"""The compiler's graph: a decoder-only transformer as a short list of our own ops.

The front end (:mod:`.capture`) lifts a PyTorch model into this form; tensor parallelism,
tiling and code generation work on it. An op is coarse on purpose -- a whole attention block
or MLP is one node -- because those are the units the kernels, the tensor-parallel rules and
the schedule are written for. Tensors between nodes are activations of shape
``(tokens, width)``; weights are named parameters held by the graph in fp32 (PyTorch's
``(out, in)`` layout for linears).

Ops (``Node.op``), their inputs, weights and attributes:

- ``embed``: token ids -> rows of ``weight`` (``vocab x hidden``).
- ``rmsnorm``: ``x * rsqrt(mean(x^2) + eps) * weight``; attr ``eps``.
- ``attention``: ``x`` -> ``o_proj(attn(rope(q_proj x), rope(k_proj x), v_proj x))``; weights
  ``q, k, v, o`` and optional biases ``q_bias, k_bias, v_bias, o_bias``; attrs ``heads``,
  ``kv_heads``, ``head_dim``, ``scale``, ``rope_theta``, ``window`` (None or the number of
  keys a query sees, itself included) -- always causal.
- ``mlp``: ``down(silu(gate x) * up x)``; weights ``gate, up, down`` (optional biases
  ``gate_bias, up_bias, down_bias``); attr ``act`` (``"silu"``).
- ``add``: elementwise sum of two activations (the residual connections).
- ``linear``: ``x @ weight.T (+ bias)`` (the LM head; its weight may be the embedding's).
"""

from dataclasses import dataclass, field

import numpy as np

__all__ = ["OPS", "ModelSpec", "Node", "Graph", "GraphError"]

#: Every op the graph may hold, with the weights it needs and the ones it may have.
OPS = {
    "embed": ({"weight"}, set()),
    "rmsnorm": ({"weight"}, set()),
    "attention": ({"q", "k", "v", "o"}, {"q_bias", "k_bias", "v_bias", "o_bias"}),
    "mlp": ({"gate", "up", "down"}, {"gate_bias", "up_bias", "down_bias"}),
    "add": (set(), set()),
    "linear": ({"weight"}, {"bias"}),
}


class GraphError(ValueError):
    """A graph that breaks its own rules (unknown op, missing weight, bad shape)."""


@dataclass(frozen=True)
class ModelSpec:
    """The dimensions of a decoder-only model, as the kernels and the planner need them."""
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rms_eps: float
    rope_theta: float
    max_positions: int
    windows: tuple = ()          #: per layer: None (full causal) or the window in keys
    tied: bool = False           #: the LM head is the embedding
    name: str = "model"

    def __post_init__(self):
        if self.heads % self.kv_heads:
            raise GraphError(f"{self.heads} query heads do not split into groups of "
                             f"{self.kv_heads} KV heads")
        if len(self.windows) != self.layers:
            raise GraphError(f"{len(self.windows)} layer windows for {self.layers} layers")

    def as_dict(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class Node:
    """One op: ``inputs`` name earlier nodes (or ``"tokens"``), ``weights`` map the op's weight
    roles to parameter names of the graph."""
    name: str
    op: str
    inputs: tuple
    weights: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    """Nodes in execution order (each reads only earlier ones), the parameters they name, and
    the node whose value is the model's output (the logits)."""
    spec: ModelSpec
    nodes: list
    params: dict
    output: str

    def __post_init__(self):
        self.check()

    def node(self, name):
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def check(self):
        """Raise :class:`GraphError` unless every op is known, every input defined before
        use, every weight present with the needed roles."""
        seen = {"tokens"}
        for n in self.nodes:
            if n.op not in OPS:
                raise GraphError(f"node {n.name}: unknown op {n.op!r}")
            need, may = OPS[n.op]
            roles = set(n.weights)
            if not need <= roles or not roles <= need | may:
                raise GraphError(f"node {n.name} ({n.op}): weights {sorted(roles)}, needs "
                                 f"{sorted(need)}" + (f", may have {sorted(may)}" if may else ""))
            for i in n.inputs:
                if i not in seen:
                    raise GraphError(f"node {n.name} reads {i!r} before it is computed")
            for p in n.weights.values():
                if p not in self.params:
                    raise GraphError(f"node {n.name} names a missing parameter {p!r}")
                if self.params[p].dtype != np.float32:
                    raise GraphError(f"parameter {p} is {self.params[p].dtype}, not float32")
            if n.name in seen:
                raise GraphError(f"two nodes are named {n.name!r}")
            seen.add(n.name)
        if self.output not in seen:
            raise GraphError(f"the output {self.output!r} is not a node")

    def weight(self, node, role):
        """The parameter array of ``node``'s weight ``role`` (None if it has none)."""
        name = node.weights.get(role)
        return None if name is None else self.params[name]
