"""The ``.tx`` plan language: source text -> AST -> ``MeshSpec`` and ``Plan``.

``parse`` builds the AST (with positions and comments), ``to_plan`` turns it into
the same front-end objects a Python user writes, and ``format_plan`` prints it
in canonical form. Nothing here runs code from the file or imports JAX.
"""

from titanax.frontend.language.formatter import format_plan
from titanax.frontend.language.parser import Comment, ParsedPlan, grammar_text, parse
from titanax.frontend.language.source import MAX_SOURCE_BYTES, SourceFile
from titanax.frontend.language.to_plan import PlanFileContents, to_plan

__all__ = [
    "MAX_SOURCE_BYTES",
    "Comment",
    "ParsedPlan",
    "PlanFileContents",
    "SourceFile",
    "format_plan",
    "grammar_text",
    "parse",
    "to_plan",
]
