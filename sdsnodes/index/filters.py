"""Row filters for indexes: a pyarrow expression, or a small SQL/Python-like string.

The string form is parsed with :mod:`ast` (never evaluated): column names, literals (numbers,
strings, True/False/None, lists), comparisons (``== != < <= > >=``, chained ones too), ``in`` /
``not in`` a list, ``is None`` / ``is not None``, ``and`` / ``or`` / ``not`` (SQL's ``AND``,
``OR``, ``NOT``, ``=`` and ``<>`` are accepted too), and ``+ - * /`` between columns and numbers.
Examples: ``"aesthetic > 5.5 and caption is not None"``, ``"split in ['train', 'val']"``.
"""

from __future__ import annotations

import ast
import operator
import re

import pyarrow.compute as pc

_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}  # fmt: skip
_ARITH = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _sqlish(text: str) -> str:
    """SQL spellings → Python ones, outside string literals."""
    parts = re.split(r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", text)
    for i in range(0, len(parts), 2):
        p = parts[i]
        p = re.sub(r"\bAND\b", "and", p)
        p = re.sub(r"\bOR\b", "or", p)
        p = re.sub(r"\bNOT\b", "not", p)
        p = re.sub(r"\bIS\b", "is", p)
        p = re.sub(r"\bNULL\b", "None", p, flags=re.IGNORECASE)
        p = re.sub(r"\bIN\b", "in", p)
        p = p.replace("<>", "!=")
        p = re.sub(r"(?<![<>=!])=(?!=)", "==", p)
        parts[i] = p
    return "".join(parts)


def _literal(node: ast.AST) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"expected a literal, got {ast.unparse(node)!r}") from None


def _convert(node: ast.AST) -> object:
    if isinstance(node, ast.Expression):
        return _convert(node.body)
    if isinstance(node, ast.Name):
        return pc.field(node.id)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BoolOp):
        values = [_convert(v) for v in node.values]
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        out = values[0]
        for v in values[1:]:
            out = combine(out, v)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~_convert(node.operand)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return (
            -_literal(node.operand)
            if isinstance(node.operand, ast.Constant)
            else pc.negate(_convert(node.operand))
        )
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        return _ARITH[type(node.op)](_convert(node.left), _convert(node.right))
    if isinstance(node, ast.Compare):
        out, left = None, node.left
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.Is, ast.IsNot)):
                if not (isinstance(right, ast.Constant) and right.value is None):
                    raise ValueError("'is' compares with None only")
                term = _convert(left).is_null()
                term = ~term if isinstance(op, ast.IsNot) else term
            elif isinstance(op, (ast.In, ast.NotIn)):
                term = _convert(left).isin(list(_literal(right)))  # type: ignore[arg-type]
                term = ~term if isinstance(op, ast.NotIn) else term
            elif type(op) in _COMPARE:
                term = _COMPARE[type(op)](_convert(left), _convert(right))
            else:
                raise ValueError(f"unsupported comparison {type(op).__name__}")
            out = term if out is None else out & term
            left = right
        return out
    raise ValueError(f"unsupported syntax {ast.unparse(node)!r}")


def parse_filter(text: str | pc.Expression) -> pc.Expression:
    """A pyarrow expression from a filter string (or an expression, returned as is).

    Raises:
        ValueError: the string is not a supported filter; the message says what is.
    """
    if isinstance(text, pc.Expression):
        return text
    try:
        tree = ast.parse(_sqlish(text.strip()), mode="eval")
        expr = _convert(tree)
    except (SyntaxError, ValueError) as error:
        raise ValueError(
            f"cannot parse filter {text!r}: {error}. Use comparisons, 'in [...]', 'is None', "
            'and/or/not, e.g. "aesthetic > 5 and caption is not None", or a pyarrow expression.'
        ) from None
    if not isinstance(expr, pc.Expression):
        raise ValueError(f"filter {text!r} is a constant, not a condition on columns")
    return expr


def filter_columns(filter: str | pc.Expression) -> set[str] | None:  # noqa: A002
    """The column names a filter string reads (after renames), or None for a pyarrow
    expression (its fields are not listed by pyarrow's API: every column is read)."""
    if isinstance(filter, pc.Expression):
        return None
    tree = ast.parse(_sqlish(filter.strip()), mode="eval")
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
