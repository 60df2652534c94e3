"""Parse ``.tx`` text into the AST, turning every lark error into a located ``ParseError``.

The grammar is ``grammar/titanax.lark`` (shipped inside the package as
``titanax/frontend/language/titanax.lark``). Parsing is LALR with lark's
contextual lexer, so a keyword such as ``model`` can still name an axis where
only a name fits. Comments are collected with their positions for the formatter.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
from dataclasses import dataclass
from importlib import resources

import lark
from lark import Lark, Token, Transformer, v_args

from titanax.errors import Diagnostic, ParseError
from titanax.frontend.bounds import MAX_LITERAL_DIGITS
from titanax.frontend.language import ast
from titanax.frontend.language.source import SourceFile

__all__ = ["Comment", "ParsedPlan", "grammar_text", "parse"]

_KEYWORDS = (
    "mesh",
    "data_parallel",
    "fully_sharded",
    "tensor_parallel",
    "pipeline",
    "precision",
    "activations",
    "model",
    "over",
    "stage",
)
_PUNCTUATION = {
    "LBRACE": "{",
    "RBRACE": "}",
    "LPAR": "(",
    "RPAR": ")",
    "LSQB": "[",
    "RSQB": "]",
    "EQUAL": "=",
    "COMMA": ",",
    "COLON": ":",
}
_TERMINAL_NAMES = {
    **{name: f"'{text}'" for name, text in _PUNCTUATION.items()},
    **{kw.upper(): f"'{kw}'" for kw in _KEYWORDS},
    **{f"_{kw.upper()}": f"'{kw}'" for kw in _KEYWORDS},
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a decimal number",
    "STRING": 'a "quoted string"',
    "$END": "the end of the file",
}


@dataclass(frozen=True)
class Comment:
    """A ``#`` comment: its position and text (including the ``#``)."""

    line: int
    column: int
    text: str


@dataclass(frozen=True)
class ParsedPlan:
    """A parsed file: the source, its AST and its comments."""

    source: SourceFile
    ast: ast.PlanFile
    comments: tuple[Comment, ...]


def grammar_text() -> str:
    """The grammar, read from inside the installed package."""
    return resources.files("titanax.frontend.language").joinpath("titanax.lark").read_text(encoding="utf-8")


_comments: contextvars.ContextVar[list[Comment]] = contextvars.ContextVar("titanax_comments")


def _collect_comment(token: Token) -> Token:
    _comments.get().append(Comment(token.line, token.column, str(token)))
    return token


@functools.cache
def _lark() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _collect_comment},
    )


def _token_span(token: Token) -> ast.Span:
    return ast.Span(token.line, token.column, token.end_line, token.end_column)


def _meta_span(meta: lark.tree.Meta) -> ast.Span:
    return ast.Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _unquote(token: Token) -> str:
    return str(token)[1:-1]


_KEYWORD_TYPES = frozenset(kw.upper() for kw in _KEYWORDS)


def _content(children: list) -> list:
    # Keyword and brace tokens are kept in the tree only for their positions.
    return [c for c in children if not (isinstance(c, Token) and c.type in _KEYWORD_TYPES | {"LBRACE", "RBRACE"})]


def _integer(source: SourceFile, token: Token) -> int:
    """The value of an INT token; one too long to be any setting is TX614 (Python's ``int()`` itself
    refuses more than 4300 digits with a bare ValueError)."""
    digits = len(str(token).lstrip("-").lstrip("0"))
    if digits > MAX_LITERAL_DIGITS:
        raise ParseError(
            Diagnostic(
                code="TX614",
                message=f"an integer of {digits} digits; no setting takes more than {MAX_LITERAL_DIGITS}",
                hint="write the count the setting needs (mesh sizes are at most 2**20 = 1048576)",
                location=source.location(token.line, token.column, min(len(str(token)), 40)),
            )
        )
    return int(token)


@v_args(meta=True)
class _ToAST(Transformer):
    """Build AST nodes; method names are the grammar's rule names."""

    def __init__(self, source: SourceFile):
        super().__init__()
        self.source = source

    def start(self, meta, children):
        return ast.PlanFile(tuple(children))

    def mesh_stmt(self, meta, children):
        (block,) = _content(children)
        return ast.MeshStmt(block, _meta_span(meta))

    def data_parallel_stmt(self, meta, children):
        axes, *block = _content(children)
        return ast.DataParallelStmt(axes, block[0] if block else None, _meta_span(meta))

    def fully_sharded_stmt(self, meta, children):
        axes, *block = _content(children)
        return ast.FullyShardedStmt(axes, block[0] if block else None, _meta_span(meta))

    def tensor_parallel_stmt(self, meta, children):
        axes, *block = _content(children)
        return ast.TensorParallelStmt(axes, block[0] if block else None, _meta_span(meta))

    def pipeline_stmt(self, meta, children):
        axes, block = _content(children)
        return ast.PipelineStmt(axes, block, _meta_span(meta))

    def precision_stmt(self, meta, children):
        (block,) = _content(children)
        return ast.PrecisionStmt(block, _meta_span(meta))

    def activations_stmt(self, meta, children):
        (block,) = _content(children)
        return ast.ActivationsStmt(block, _meta_span(meta))

    def model_stmt(self, meta, children):
        (entry,) = _content(children)
        return ast.ModelStmt(_unquote(entry), _meta_span(meta))

    def axes(self, meta, children):
        return tuple(ast.AxisName(str(t), _token_span(t)) for t in children)

    def block(self, meta, children):
        return ast.Block(tuple(_content(children)), _meta_span(meta))

    def setting(self, meta, children):
        key, value = children
        return ast.Setting(str(key), value, _meta_span(meta))

    def rule(self, meta, children):
        pattern, value = children
        return ast.RuleItem(_unquote(pattern), value, _meta_span(meta))

    def stage(self, meta, children):
        return ast.StageItem(tuple(_content(children)), _meta_span(meta))

    def layer(self, meta, children):
        name, *bounds = children
        start = _integer(self.source, bounds[0]) if bounds else None
        stop = _integer(self.source, bounds[1]) if len(bounds) > 1 else None
        return ast.LayerRef(str(name), start, stop, _meta_span(meta))

    def int_value(self, meta, children):
        return ast.IntValue(_integer(self.source, children[0]), _meta_span(meta))

    def float_value(self, meta, children):
        return ast.FloatValue(str(children[0]), _meta_span(meta))

    def name_value(self, meta, children):
        return ast.NameValue(str(children[0]), _meta_span(meta))

    def string_value(self, meta, children):
        return ast.StringValue(_unquote(children[0]), _meta_span(meta))

    def spec(self, meta, children):
        return ast.SpecValue(tuple(children), _meta_span(meta))

    def spec_axis(self, meta, children):
        # `none` (or `None`) leaves the dimension whole; any other name is one axis.
        name = str(children[0])
        return None if name in ("none", "None") else name

    def spec_axes(self, meta, children):
        return tuple(str(t) for t in children)


def _describe_expected(expected: set[str]) -> str:
    names = sorted({_TERMINAL_NAMES.get(t, t) for t in expected if not t.startswith("__")})
    if not names:
        return "the file cannot continue here"
    if len(names) == 1:
        return f"expected {names[0]}"
    return "expected one of " + ", ".join(names)


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type in _PUNCTUATION or token.type.lstrip("_") in _KEYWORD_TYPES:
        return _TERMINAL_NAMES[token.type]
    text = str(token)
    shown = text if len(text) <= 40 else text[:37] + "..."
    kind = {"NAME": "name", "INT": "integer", "FLOAT": "number", "STRING": "string"}.get(token.type, "token")
    return f"{kind} {shown}" if token.type == "STRING" else f"{kind} {shown!r}"


def _keyword_hint(token: Token, expected: set[str]) -> str:
    keywords = [_TERMINAL_NAMES[t].strip("'") for t in expected if t.lstrip("_") in _KEYWORD_TYPES]
    close = difflib.get_close_matches(str(token), keywords, n=1, cutoff=0.6) if token.type == "NAME" else []
    return f"did you mean '{close[0]}'? " if close else ""


def _syntax_error(source: SourceFile, err: lark.exceptions.UnexpectedInput) -> ParseError:
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = source.text[err.pos_in_stream] if err.pos_in_stream < len(source.text) else ""
        if char == '"':
            message, hint = "unterminated string", 'close the string with " on the same line'
        else:
            message = f"unexpected character {char!r}"
            hint = _describe_expected(set(err.allowed or ()))
        return ParseError(
            Diagnostic(code="TX602", message=message, hint=hint, location=source.location(err.line, err.column))
        )
    if isinstance(err, lark.exceptions.UnexpectedToken) and err.token.type != "$END":
        token = err.token
        expected = set(err.expected or ())
        return ParseError(
            Diagnostic(
                code="TX601",
                message=f"unexpected {_describe_token(token)}",
                hint=_keyword_hint(token, expected) + _describe_expected(expected),
                location=source.location(token.line, token.column, max(1, len(str(token)))),
            )
        )
    expected = set(getattr(err, "expected", ()) or ())
    return ParseError(
        Diagnostic(
            code="TX603",
            message="the file ends in the middle of a statement",
            hint=_describe_expected(expected) + "; is a closing brace or bracket missing?",
            location=source.end_location(),
        )
    )


def parse(source: SourceFile) -> ParsedPlan:
    """Parse ``source`` into its AST; raise a located :class:`~titanax.errors.ParseError`."""
    comments: list[Comment] = []
    token = _comments.set(comments)
    try:
        tree = _lark().parse(source.text)
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(source, err) from None
    finally:
        _comments.reset(token)
    try:
        plan = _ToAST(source).transform(tree)
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, ParseError):
            raise err.orig_exc from None
        raise
    return ParsedPlan(source, plan, tuple(comments))
