"""Which PyTorch module each ONNX node came from, so precision reports name ``backbone.layer2.0.conv1``
rather than ``node_Conv_11``.

The torch.export-based exporter writes per-node metadata: ``pkg.torch.onnx.name_scopes`` is the list
of module scopes from the root down to the op (``['', 'layer', 'layer.0', 'layer.0.fc', 'linear']``),
``namespace`` the same path with class names. The clean-up (onnxslim, then ONNX Runtime's optimiser)
drops every node's metadata but keeps node and tensor names, so the map is read before the clean-up
(``read_scopes``) and stamped back afterwards as one key per node (``stamp``): it then travels in the
bundle's ``model.onnx``, and a re-quantisation of the bundle, without the PyTorch model, still names
modules. Nodes a rewrite created take the module of the node whose output they now write, else of
the nodes feeding them.
"""

from __future__ import annotations

import ast
from collections import defaultdict

import onnx

MODULE_KEY = "vla.module"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
NAMESPACE_KEY = "namespace"
ROOT = "(top level)"


def _path_from_scopes(value: str) -> str | None:
    """``['', 'layer', 'layer.0', 'layer.0.fc', 'linear']`` -> ``layer.0.fc`` (the last is the op itself)."""
    try:
        scopes = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or len(scopes) < 2:
        return None
    return str(scopes[-2]) or ROOT


def _path_from_namespace(value: str) -> str | None:
    """``: M/layer: Sequential/layer.0.fc: Linear/linear: aten.linear`` -> ``layer.0.fc``."""
    parts = [p.split(":")[0].strip() for p in value.split("/")]
    return (parts[-2] or ROOT) if len(parts) >= 2 else None


def node_path(node: onnx.NodeProto) -> str | None:
    """The module path recorded on one node (ours, or the exporter's), None when it carries none."""
    props = {p.key: p.value for p in node.metadata_props}
    if MODULE_KEY in props:
        return props[MODULE_KEY]
    if SCOPES_KEY in props:
        return _path_from_scopes(props[SCOPES_KEY])
    if NAMESPACE_KEY in props:
        return _path_from_namespace(props[NAMESPACE_KEY])
    return None


def read_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name and output tensor name -> module path, from the graph as exported."""
    out: dict[str, str] = {}
    for node in model.graph.node:
        path = node_path(node)
        if path is None:
            continue
        out[node.name] = path
        for t in node.output:
            out.setdefault(f"tensor:{t}", path)
    return out


def _direct(node: onnx.NodeProto, scopes: dict[str, str]) -> str | None:
    """The path of the exported node this one is, or was rewritten from: same name, same name before
    the optimiser's ``/Suffix`` (``node_MatMul_14/MatMulAddFusion``), or the same output tensor."""
    for key in (node.name, node.name.split("/")[0]):
        if key in scopes:
            return scopes[key]
    return next((scopes[f"tensor:{t}"] for t in node.output if f"tensor:{t}" in scopes), None)


def stamp(model: onnx.ModelProto, scopes: dict[str, str]) -> int:
    """Write each node's module path (``MODULE_KEY``) into ``model``; returns how many nodes got one.

    Nodes a rewrite created with new names (a reshape around a fused Gemm) take the path of a
    neighbour: a node feeding them, else one they feed (a module path before the top level)."""
    paths = {n.name: p for n in model.graph.node if (p := _direct(n, scopes)) is not None}
    producer = {t: n.name for n in model.graph.node for t in n.output}
    consumers: dict[str, list[str]] = defaultdict(list)
    for n in model.graph.node:
        for t in n.input:
            if t in producer:
                consumers[producer[t]].append(n.name)
    for node in model.graph.node:  # topological order: producers are resolved first
        if node.name in paths:
            continue
        near = [paths.get(producer.get(t, "")) for t in node.input] + [paths.get(c) for c in consumers[node.name]]
        near = [p for p in near if p]
        named = [p for p in near if p != ROOT]
        if named or near:
            paths[node.name] = (named or near)[0]
    for node in model.graph.node:
        if node.name not in paths:
            continue
        for prop in list(node.metadata_props):
            if prop.key == MODULE_KEY:
                node.metadata_props.remove(prop)
        node.metadata_props.add(key=MODULE_KEY, value=paths[node.name])
    return len(paths)


def keep_module_paths_only(model: onnx.ModelProto) -> None:
    """Replace the exporter's per-node metadata with ``MODULE_KEY`` alone (for ``--no-slim``, where no
    clean-up drops it): the exporter's ``stack_trace`` holds absolute paths of the user's source and of
    Python's install, so the same model exported from another folder or machine would not give the same
    bytes."""
    scopes = read_scopes(model)
    _strip(model.graph)
    stamp(model, scopes)


def _strip(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        del node.metadata_props[:]
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                _strip(sub)


def module_paths(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> module path for every node of ``model`` that carries one."""
    return {n.name: p for n in model.graph.node if (p := node_path(n)) is not None}


def group_by_module(nodes: list[str], paths: dict[str, str], max_groups: int) -> dict[str, list[str]]:
    """Candidate nodes grouped by module, coarse enough that there are at most ``max_groups`` groups.

    Each node goes under its module path cut to the first ``depth`` components, for the deepest
    ``depth`` that still gives at most ``max_groups`` groups (nodes without a path go under their own
    node name, so when even top-level modules are too many, depth 1 is returned with more groups than
    ``max_groups``: the search's time budget then bounds the measuring). Groups keep the nodes' order;
    the dict is ordered by each group's first node.
    """
    def grouped(depth: int | None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for n in nodes:
            path = paths.get(n)
            key = n if path is None else (path if depth is None else ".".join(path.split(".")[:depth]))
            out[key].append(n)
        return dict(out)

    best = grouped(None)
    if len(best) <= max_groups:
        return best
    deepest = max((len(p.split(".")) for n in nodes if (p := paths.get(n))), default=1)
    for depth in range(deepest - 1, 0, -1):
        best = grouped(depth)
        if len(best) <= max_groups:
            break
    return best
