"""Deterministic renderings of the plan IR: text (for humans and golden tests), JSON, DOT.

The same IR always prints to the same bytes: nodes in kind-then-id order,
attributes in declaration order, edges sorted.
"""

from __future__ import annotations

import json
from typing import Any

from titanax.ir.graph import PlanIR

__all__ = ["format_value", "print_ir", "ir_to_dict", "ir_to_json", "ir_to_dot"]


def format_value(value: Any) -> str:
    """Render one attribute value in the IR's text syntax."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    return str(value)


def print_ir(ir: PlanIR, *, locations: bool = False) -> str:
    """Return the IR as text: one line per node, then one per edge.

    With ``locations``, each node from a plan file ends with ``// path:line:col``. They are
    off by default so that a plan written in Python and the same plan in a ``.tx``
    file print identically.
    """
    lines = ["plan_ir {"]
    for node_id in ir.ids():
        node = ir.node(node_id)
        attrs = ", ".join(f"{k} = {format_value(v)}" for k, v in node.attributes().items())
        where = f"  // {node.location}" if locations and node.location else ""
        lines.append(f"  %{node_id} = {node.type_name} {{{attrs}}}{where}")
    for source, target, kind in ir.edges():
        lines.append(f"  %{source} -{kind}-> %{target}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def ir_to_dict(ir: PlanIR, *, locations: bool = False) -> dict[str, Any]:
    """Return the IR as plain data: ``{"nodes": [...], "edges": [...]}`` (locations as in :func:`print_ir`)."""
    nodes = []
    for node_id in ir.ids():
        node = ir.node(node_id)
        entry = {"id": node_id, "kind": str(node.kind), "type": node.type_name}
        entry.update({k: _jsonable(v) for k, v in node.attributes().items()})
        if locations and node.location:
            entry["location"] = str(node.location)
        nodes.append(entry)
    edges = [{"source": s, "target": t, "kind": str(k)} for s, t, k in ir.edges()]
    return {"nodes": nodes, "edges": edges}


def ir_to_json(ir: PlanIR, *, locations: bool = False) -> str:
    """Return the IR as indented JSON; attributes keep their declaration order."""
    return json.dumps(ir_to_dict(ir, locations=locations), indent=2) + "\n"


def ir_to_dot(ir: PlanIR, *, locations: bool = False) -> str:
    """Return the IR as a Graphviz ``digraph``."""
    lines = ["digraph plan_ir {", "  rankdir=LR;", "  node [shape=box, fontname=monospace];"]
    for node_id in ir.ids():
        node = ir.node(node_id)
        attrs = "\\n".join(f"{k}={format_value(v)}".replace('"', '\\"') for k, v in node.attributes().items())
        if locations and node.location:
            attrs += f"\\n@ {node.location}"
        lines.append(f'  "{node_id}" [label="{node.type_name}\\n{attrs}"];')
    for source, target, kind in ir.edges():
        lines.append(f'  "{source}" -> "{target}" [label="{kind}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
