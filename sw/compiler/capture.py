"""The front end: a PyTorch decoder-only model -> :class:`~.graph.Graph`.

The model is run through ``torch.export`` on a short prompt, which yields the ATen ops it
executes, each tagged with the module it ran in (``nn_module_stack``). Ops are grouped by the
outermost module that has a role we compile -- embedding, RMSNorm, attention, MLP, the LM
head -- and each group must use only the ops its role allows; anything else raises
:class:`UnsupportedOp` naming the op and the module. The groups become our nodes, wired by
the dataflow between them (so residual connections are what the model does, not what we
assume). Inside a group the dataflow decides the roles of the linears: the projection
feeding the query of ``scaled_dot_product_attention`` is ``q``, the one reading its result
``o``; the MLP's projection feeding the SiLU is ``gate``.

Roles come from class names (``...RMSNorm``, ``...Attention``, ``...MLP``,
``...DecoderLayer``, ``...RotaryEmbedding``, ``Embedding``, ``Linear``), which Hugging
Face's Llama, Mistral and Qwen2 and our own :class:`~.models.TinyLlama` share. Position ids,
masks and RoPE tables are computed outside the graph by the kernels (causal mask in the
kernel, RoPE from ``rope_theta``), so their ops are accepted as glue and dropped; the
configuration supplies what they encode (``rope_theta``, sliding windows), and the tests
hold the captured graph to the model's own logits.
"""

import inspect


from .graph import Graph, GraphError, ModelSpec, Node

__all__ = ["UnsupportedOp", "capture", "spec_from_config"]


class UnsupportedOp(GraphError):
    """The model does something the compiler cannot compile: the message names it."""


def _ops(*names):
    return frozenset(f"aten.{n}" for n in names)


_META = _ops("_assert_tensor_metadata.default", "to.dtype", "to.dtype_layout", "alias.default",
             "contiguous.default", "clone.default", "detach.default")
_VIEWS = _ops("view.default", "reshape.default", "transpose.int", "unsqueeze.default",
              "expand.default", "slice.Tensor", "permute.default", "squeeze.dim",
              "select.int")

#: What each role may execute.
ALLOWED = {
    "embed": _META | _ops("embedding.default"),
    "rmsnorm": _META | _ops("pow.Tensor_Scalar", "mean.dim", "add.Tensor", "add.Scalar",
                            "rsqrt.default", "mul.Tensor"),
    "attention": _META | _VIEWS | _ops("linear.default", "mul.Tensor", "neg.default",
                                       "cat.default", "add.Tensor",
                                       "scaled_dot_product_attention.default"),
    "mlp": _META | _ops("linear.default", "silu.default", "mul.Tensor"),
    "layer": _META | _ops("add.Tensor"),
    "lm_head": _META | _ops("linear.default"),
    # positions, masks: integer and boolean work the kernels do themselves
    "glue": _META | _VIEWS | _ops(
        "arange.default", "arange.start", "add.Tensor", "sub.Tensor", "new_ones.default",
        "ones.default", "full.default", "index.Tensor", "eq.Tensor", "ne.Scalar",
        "le.Tensor", "lt.Tensor", "gt.Tensor", "ge.Tensor", "__and__.Tensor",
        "__or__.Tensor", "logical_and.default", "diff.default", "cumsum.default",
        "where.self", "scalar_tensor.default"),
    "rotary": None,   # cos/sin tables: recomputed from rope_theta by the kernels
}
_PASS = frozenset({"<built-in function getitem>", "wrap_with_set_grad_enabled"})

_SUFFIX_ROLES = (("RMSNorm", "rmsnorm"), ("RotaryEmbedding", "rotary"), ("Attention", "attention"),
                 ("MLP", "mlp"), ("DecoderLayer", "layer"))


def _role(cls_name, inside_block):
    base = cls_name.rsplit(".", 1)[-1]
    if base == "Embedding":
        return "embed"
    if base == "Linear":
        return None if inside_block else "lm_head"
    for suffix, role in _SUFFIX_ROLES:
        if base.endswith(suffix):
            return role
    return None


def _owner(node):
    """(module path, role) of the group ``node`` belongs to: the outermost module with a
    role, the innermost decoder layer for residual adds, else glue."""
    stack = list(node.meta.get("nn_module_stack", {}).values())
    layer = None
    for path, cls in stack:
        name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        role = _role(name, inside_block=False)
        if role == "layer":
            layer = path
            continue
        if role is not None:
            return path, role
    return (layer, "layer") if layer else ("", "glue")


def _where(node):
    """The innermost module ``node`` ran in, for messages: ``path (Class)``."""
    stack = list(node.meta.get("nn_module_stack", {}).values())
    if not stack or not stack[-1][0]:
        return "the model's top level"
    path, cls = stack[-1]
    name = cls if isinstance(cls, str) else cls.__qualname__
    return f"{path} ({name.rsplit('.', 1)[-1]})"


def _config_value(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def spec_from_config(config, *, vocab, hidden, layers, heads, kv_heads, head_dim,
                     intermediate, tied, name="model"):
    """The :class:`ModelSpec` of a model: dimensions from its weights (passed in), the rest
    (RMSNorm eps, RoPE, windows, positions) from its configuration."""
    rope = _config_value(config, "rope_parameters", "rope_scaling", default={}) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedOp(f"RoPE type {rope_type!r} (only the default, unscaled RoPE)")
    theta = rope.get("rope_theta", _config_value(config, "rope_theta", default=10000.0))
    act = _config_value(config, "hidden_act", default="silu")
    if act != "silu":
        raise UnsupportedOp(f"activation {act!r} (only SiLU-gated MLPs)")
    window = _config_value(config, "sliding_window")
    types = _config_value(config, "layer_types")
    if types is not None:
        windows = tuple(window if t == "sliding_attention" else None for t in types)
        unknown = set(types) - {"sliding_attention", "full_attention"}
        if unknown:
            raise UnsupportedOp(f"layer types {sorted(unknown)}")
    else:
        windows = (window,) * layers
    return ModelSpec(
        vocab=vocab, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, intermediate=intermediate,
        rms_eps=float(_config_value(config, "rms_norm_eps", default=1e-6)),
        rope_theta=float(theta),
        max_positions=int(_config_value(config, "max_position_embeddings", default=2048)),
        windows=tuple(None if w is None else int(w) for w in windows[:layers]), tied=tied,
        name=name)


def capture(model, *, prompt_len=8, name=None):
    """Lift ``model`` (a decoder-only causal LM: ``model(input_ids)`` -> logits, with a
    ``config``) into a :class:`Graph`. Raises :class:`UnsupportedOp` for what the compiler
    cannot compile."""
    import torch

    config = getattr(model, "config", None)
    if config is None:
        raise GraphError(f"{type(model).__name__} has no `config`: the compiler needs its "
                         "RMSNorm eps, RoPE and window settings")
    vocab = _config_value(config, "vocab_size")
    ids = torch.arange(prompt_len).remainder(vocab or 2)[None]
    kwargs = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters \
        else {}
    model = model.eval()
    with torch.no_grad():
        exported = torch.export.export(model, (ids,), kwargs=kwargs)
    g = exported.graph
    sig = exported.graph_signature
    param_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    tokens_input = [s.arg.name for s in sig.input_specs if s.kind.name == "USER_INPUT"][0]
    state = exported.state_dict

    # -- group the ops by owner, checking each against its role -------------------------
    owner, groups, adds = {}, {}, {}
    for n in g.nodes:
        if n.op != "call_function":
            continue
        path, role = _owner(n)
        target = str(n.target)
        allowed = ALLOWED[role]
        if target not in _PASS and allowed is not None and target not in allowed:
            raise UnsupportedOp(f"{target} in {_where(n)}: the npusim compiler has no kernel "
                                "for it")
        if role == "layer" and target not in _META and target not in _PASS:
            # each residual add is a node of its own, in order
            adds[path] = adds.get(path, -1) + 1
            path = f"{path}.add{adds[path]}"
        owner[n] = (path, role)
        groups.setdefault((path, role), []).append(n)

    def source(arg):
        """The value an input really is, looking through dtype casts and copies (anywhere)
        and glue views (the logits slice)."""
        while arg in owner and arg.args and hasattr(arg.args[0], "op") and (
                str(arg.target) in _META or owner[arg][1] == "glue"):
            arg = arg.args[0]
        return arg

    def param(arg):
        if getattr(arg, "op", None) != "placeholder" or arg.name not in param_of:
            raise GraphError(f"{arg} is not a parameter")
        return param_of[arg.name]

    nodes, value_of, used, paths = [], {}, set(), {}

    def short(path):
        return path[len("model."):] if path.startswith("model.") else path

    def inputs_of(members):
        """Our node names of the float activations the group reads from other groups."""
        inside, found = set(members), []
        for n in members:
            for a in n.all_input_nodes:
                a = source(a)
                if a in inside:
                    continue
                if a.op == "placeholder" and a.name == tokens_input:
                    name = "tokens"
                elif a in value_of:
                    name = value_of[a]
                else:
                    continue   # parameters, masks, RoPE tables
                if name not in found:
                    found.append(name)
        return tuple(found)

    def outputs(members):
        """The group's values read outside it (a cast of its input is its input)."""
        inside = set(members)
        return [n for n in members if str(n.target) not in _META
                and any(u not in inside for u in n.users)]

    def linear(n):
        w = param(n.args[1])
        b = param(n.args[2]) if len(n.args) > 2 and n.args[2] is not None else None
        used.update({w} | ({b} if b else set()))
        return w, b

    dims = {}
    for (path, role), members in groups.items():
        if role in ("glue", "rotary"):
            continue
        node_name = short(path)
        if role == "layer":
            for n in members:
                if str(n.target) == "aten.add.Tensor":
                    ins = [value_of.get(source(a)) for a in n.args[:2]]
                    if None in ins:
                        raise UnsupportedOp(f"the residual add {path} reads a value the "
                                            "compiler does not compute")
                    nodes.append(Node(node_name, "add", tuple(ins)))
                    value_of[n] = node_name
            continue
        ins = inputs_of(members)
        outs = outputs(members)
        if len(outs) != 1:
            raise UnsupportedOp(f"{path} ({role}) hands {len(outs)} values to the rest of "
                                "the model, not one")
        op = {"lm_head": "linear"}.get(role, role)
        node = Node(node_name, op, ins)
        by_target = {}
        for n in members:
            by_target.setdefault(str(n.target), []).append(n)
        if role == "embed":
            (emb,) = by_target["aten.embedding.default"]
            node.weights["weight"] = param(emb.args[0])
            used.add(node.weights["weight"])
        elif role == "rmsnorm":
            node.weights["weight"] = _rmsnorm_weight(members, param, path)
            used.add(node.weights["weight"])
            node.attrs["eps"] = _rmsnorm_eps(members, path)
        elif role == "lm_head":
            (lin,) = by_target["aten.linear.default"]
            node.weights["weight"], b = linear(lin)
            if b:
                node.weights["bias"] = b
        elif role == "attention":
            _attention(node, members, by_target, linear, path, dims)
        elif role == "mlp":
            _mlp(node, members, by_target, linear, path, dims)
        nodes.append(node)
        paths[node_name] = path
        value_of[outs[0]] = node_name

    out = [a for a in g.output_node().args[0] if hasattr(a, "op")]
    logits = value_of.get(source(out[0])) if out else None
    if logits is None:
        raise UnsupportedOp("the model's output is not the LM head's logits")

    attn = [n for n in nodes if n.op == "attention"]
    mlps = [n for n in nodes if n.op == "mlp"]
    embeds = [n for n in nodes if n.op == "embed"]
    if not attn or len(attn) != len(mlps) or len(embeds) != 1:
        raise UnsupportedOp(f"{len(embeds)} embeddings, {len(attn)} attention blocks and "
                            f"{len(mlps)} MLPs: not a decoder-only transformer")
    head = nodes[-1]
    params = {p: state[p].detach().float().numpy().copy() for p in sorted(used)}
    emb_w, head_w = embeds[0].weights["weight"], head.weights["weight"]
    tied = head_w == emb_w or state[head_w].data_ptr() == state[emb_w].data_ptr()
    if tied:
        # one parameter, named after the embedding whichever name export kept
        shared = params.pop(emb_w)
        params.pop(head_w, None)
        emb_w = f"{paths[embeds[0].name]}.weight"
        params[emb_w] = shared
        embeds[0].weights["weight"] = head.weights["weight"] = emb_w
    vocab, hidden = params[emb_w].shape
    spec = spec_from_config(
        config, vocab=vocab, hidden=hidden, layers=len(attn), heads=dims["heads"],
        kv_heads=dims["kv_heads"], head_dim=dims["head_dim"],
        intermediate=dims["intermediate"], tied=tied,
        name=name or getattr(config, "model_type", None) or type(model).__name__)
    for i, n in enumerate(attn):
        n.attrs.update(rope_theta=spec.rope_theta, window=spec.windows[i])
    return Graph(spec, nodes, params, logits)


def _rmsnorm_weight(members, param, path):
    for n in members:
        if str(n.target) == "aten.mul.Tensor":
            for a in n.args:
                if getattr(a, "op", None) == "placeholder":
                    return param(a)
    raise UnsupportedOp(f"{path}: an RMSNorm without a learned scale")


def _rmsnorm_eps(members, path):
    for n in members:
        if str(n.target) in ("aten.add.Tensor", "aten.add.Scalar") and \
                isinstance(n.args[1], float):
            return n.args[1]
    raise UnsupportedOp(f"{path}: an RMSNorm without an epsilon")


def _ancestors(node, members):
    """The group's nodes ``node`` depends on, itself included."""
    inside, seen, todo = set(members), set(), [node]
    while todo:
        n = todo.pop()
        if n in seen or n not in inside:
            continue
        seen.add(n)
        todo.extend(n.all_input_nodes)
    return seen


def _feeding(arg, members, linears):
    """The one linear of ``linears`` whose output reaches ``arg``."""
    found = [lin for lin in linears if lin in _ancestors(arg, members)]
    return found[0] if len(found) == 1 else None


def _attention(node, members, by_target, linear, path, dims):
    sdpas = by_target.get("aten.scaled_dot_product_attention.default", [])
    if len(sdpas) != 1:
        raise UnsupportedOp(f"{path}: attention must be one scaled_dot_product_attention, "
                            f"found {len(sdpas)}")
    (sdpa,) = sdpas
    lins = by_target.get("aten.linear.default", [])
    roles = {}
    for role, arg in zip("qkv", sdpa.args[:3]):
        lin = _feeding(arg, members, lins)
        if lin is None:
            raise UnsupportedOp(f"{path}: the attention's {role} is not one projection")
        roles[role] = lin
    rest = [lin for lin in lins if lin not in roles.values()]
    if len(rest) != 1 or sdpa not in _ancestors(rest[0], members):
        raise UnsupportedOp(f"{path}: no single output projection after the attention")
    roles["o"] = rest[0]
    if not by_target.get("aten.neg.default") or not by_target.get("aten.cat.default"):
        raise UnsupportedOp(f"{path}: attention without rotary position embedding")
    # the schema's positional arguments, then the keywords
    kw = {**dict(zip(("query", "key", "value", "attn_mask", "dropout_p", "is_causal"),
                     sdpa.args)), **sdpa.kwargs}
    if kw.get("attn_mask") is None and not kw.get("is_causal", False):
        raise UnsupportedOp(f"{path}: attention that is not causal")
    if kw.get("dropout_p", 0.0):
        raise UnsupportedOp(f"{path}: attention dropout")
    shapes = {}
    for role, lin in roles.items():
        w, b = linear(lin)
        node.weights[role] = w
        if b:
            node.weights[f"{role}_bias"] = b
        shapes[role] = tuple(lin.args[1].meta["val"].shape)
    q_shape = sdpa.args[0].meta["val"].shape   # (batch, heads, tokens, head_dim)
    k_shape = shapes["k"]
    head_dim = int(q_shape[-1])
    heads, kv_heads = shapes["q"][0] // head_dim, k_shape[0] // head_dim
    scale = kw.get("scale") or head_dim ** -0.5
    node.attrs.update(heads=heads, kv_heads=kv_heads, head_dim=head_dim, scale=float(scale))
    for k, v in (("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim)):
        if dims.setdefault(k, v) != v:
            raise UnsupportedOp(f"{path}: {k} {v}, other layers {dims[k]}")


def _mlp(node, members, by_target, linear, path, dims):
    lins = by_target.get("aten.linear.default", [])
    silus = by_target.get("aten.silu.default", [])
    if len(lins) != 3 or len(silus) != 1:
        raise UnsupportedOp(f"{path}: an MLP of {len(lins)} projections and {len(silus)} "
                            "SiLUs (only gate/up/down with SiLU)")
    gate = _feeding(silus[0], members, lins)
    down = [lin for lin in lins if silus[0] in _ancestors(lin, members)]
    up = [lin for lin in lins if lin is not gate and lin not in down]
    if gate is None or len(down) != 1 or len(up) != 1:
        raise UnsupportedOp(f"{path}: not a gated MLP (down(silu(gate x) * up x))")
    for role, lin in (("gate", gate), ("up", up[0]), ("down", down[0])):
        w, b = linear(lin)
        node.weights[role] = w
        if b:
            node.weights[f"{role}_bias"] = b
    node.attrs["act"] = "silu"
    inter = int(gate.args[1].meta["val"].shape[0])
    if dims.setdefault("intermediate", inter) != inter:
        raise UnsupportedOp(f"{path}: intermediate size {inter}, other layers "
                            f"{dims['intermediate']}")
