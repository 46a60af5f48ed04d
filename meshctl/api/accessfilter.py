"""Access log filters: the CEL subset Istio users write, parsed once into a closure (no eval).

Grammar (Envoy's attribute names)::

    expr    := and ('||' and)*
    and     := unary ('&&' unary)*
    unary   := '!' unary | primary
    primary := '(' expr ')' | 'true' | 'false' | value (OP value)? | value '.' METHOD '(' STRING ')'
    value   := ATTRIBUTE | INTEGER | STRING
    OP      := == != < <= > >=     METHOD := startsWith endsWith contains

Attributes: ``response.code`` (integer; 0 when no response was sent), ``response.flags`` (the
reason word, ``-`` when none), ``request.method``, ``request.path`` (with the query, as
Envoy's), ``request.url_path`` (without it), ``request.host``. Integers compare with any
operator, strings with ``==`` and ``!=``. Anything else is refused with the 1-based column of
the first problem.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[Any], bool]
"""Takes a finished exchange (``status``, ``flags``, ``method`` bytes, ``path``, ``query``,
``authority``) and says whether it is logged."""

_ATTRIBUTES: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "response.code": (int, lambda ex: ex.status),
    "response.flags": (str, lambda ex: ex.flags),
    "request.method": (str, lambda ex: ex.method.decode("latin-1")),
    # Envoy's request.path is the :path, query included; url_path is the path alone
    "request.path": (str, lambda ex: f"{ex.path}?{ex.query}" if ex.query else ex.path),
    "request.url_path": (str, lambda ex: ex.path),
    "request.host": (str, lambda ex: ex.authority),
}
_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
            ">": operator.gt, ">=": operator.ge}
_METHODS = {"startsWith": str.startswith, "endsWith": str.endswith,
            "contains": str.__contains__}
_TOKEN = re.compile(r"""\s*(?:(?P<int>\d+)|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
                        |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
                        |(?P<op>==|!=|<=|>=|&&|\|\||[<>!(),.]))""", re.VERBOSE)
# Envoy's response.flags is a bit set (0: none); Ami's is the reason word
_FLAGS_HINT = ('; response.flags is the reason word, "-" when none (Envoy\'s response.flags != 0 '
               'is response.flags != "-")')
_MAX_LENGTH = 1024  # a filter is a line of config, not a program


class FilterError(ValueError):
    """A filter that is not in the supported subset; ``column`` is 1-based."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(f"column {column}: {message}")
        self.column = column


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, 1-based column)
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if m is None or m.lastgroup is None:
                column = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
                raise FilterError(column, f"unexpected character {text[column - 1]!r}")
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind), m.start(kind) + 1))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        if self.i < len(self.tokens):
            return self.tokens[self.i]
        return ("end", "", len(self.text) + 1)

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        self.i += 1
        return token

    def expect(self, text: str) -> None:
        kind, value, column = self.take()
        if kind != "op" or value != text:
            raise FilterError(column, f"expected '{text}', got {_shown(kind, value)}")

    def parse(self) -> Predicate:
        predicate = self.or_()
        kind, value, column = self.peek()
        if kind != "end":
            raise FilterError(column, f"expected '&&', '||' or the end, got {_shown(kind, value)}")
        return predicate

    def or_(self) -> Predicate:
        terms = [self.and_()]
        while self.peek()[:2] == ("op", "||"):
            self.take()
            terms.append(self.and_())
        return functools.reduce(_either, terms)

    def and_(self) -> Predicate:
        terms = [self.unary()]
        while self.peek()[:2] == ("op", "&&"):
            self.take()
            terms.append(self.unary())
        return functools.reduce(_both, terms)

    def unary(self) -> Predicate:
        if self.peek()[:2] == ("op", "!"):
            self.take()
            inner = self.unary()
            return lambda ex: not inner(ex)
        return self.primary()

    def primary(self) -> Predicate:
        kind, value, _ = self.peek()
        if (kind, value) == ("op", "("):
            self.take()
            inner = self.or_()
            self.expect(")")
            return inner
        if kind == "name" and value in ("true", "false"):
            self.take()
            constant = value == "true"
            return lambda ex: constant
        start = self.i
        left_type, left = self.value()
        kind, op, op_column = self.peek()
        if kind == "op" and op in _COMPARE:
            self.take()
            right_column = self.peek()[2]
            right_type, right = self.value()
            if right_type is not left_type:
                raise FilterError(right_column, f"cannot compare {_type_name(left_type)} "
                                  f"with {_type_name(right_type)}"
                                  + (_FLAGS_HINT if self._names_flags(start) else ""))
            if left_type is str and op not in ("==", "!="):
                raise FilterError(op_column, f"strings compare with == or != only, not {op}")
            compare = _COMPARE[op]
            return lambda ex: compare(left(ex), right(ex))
        if kind == "op" and op == ".":  # value '.' METHOD '(' STRING ')'
            self.take()
            kind, name, name_column = self.take()
            if kind != "name" or name not in _METHODS:
                raise FilterError(name_column, "expected startsWith, endsWith or contains, "
                                  f"got {_shown(kind, name)}")
            if left_type is not str:
                raise FilterError(name_column, f"{name} needs a string, not "
                                  f"{_type_name(left_type)}")
            self.expect("(")
            arg_column = self.peek()[2]
            arg_type, arg = self.value()
            if arg_type is not str:
                raise FilterError(arg_column, f"{name} takes a string")
            self.expect(")")
            method = _METHODS[name]
            return lambda ex: method(left(ex), arg(ex))
        raise FilterError(op_column, "expected a comparison (==, !=, <, <=, >, >=) or a "
                          f"method call after the value, got {_shown(kind, op)}")

    def _names_flags(self, start: int) -> bool:
        """Whether the comparison from token ``start`` on reads response.flags."""
        text = "".join(value for _, value, _ in self.tokens[start:self.i])
        return "response.flags" in text

    def value(self) -> tuple[type, Callable[[Any], Any]]:
        kind, value, column = self.take()
        if kind == "int":
            number = int(value)
            return int, lambda ex: number
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", value[1:-1])
            return str, lambda ex: text
        if kind == "name":
            # an attribute: two names and a dot
            if (value in ("request", "response") and self.peek()[:2] == ("op", ".")
                    and self.tokens[self.i + 1:self.i + 2]
                    and self.tokens[self.i + 1][0] == "name"):
                self.take()
                value = f"{value}.{self.take()[1]}"
            if value not in _ATTRIBUTES:
                raise FilterError(column, f"unknown attribute {value!r} (expected one of "
                                  f"{', '.join(_ATTRIBUTES)})")
            return _ATTRIBUTES[value]
        raise FilterError(column, f"expected an attribute, a number or a string, "
                          f"got {_shown(kind, value)}")


def _either(a: Predicate, b: Predicate) -> Predicate:
    return lambda ex: a(ex) or b(ex)


def _both(a: Predicate, b: Predicate) -> Predicate:
    return lambda ex: a(ex) and b(ex)


def _shown(kind: str, value: str) -> str:
    return "the end" if kind == "end" else f"{value!r}"


def _type_name(kind: type) -> str:
    return "an integer" if kind is int else "a string"


def compile_filter(expression: str) -> Predicate:
    """The predicate for ``expression``; raises FilterError (with the column) if unsupported."""
    if len(expression) > _MAX_LENGTH:
        raise FilterError(_MAX_LENGTH + 1, f"longer than {_MAX_LENGTH} characters")
    if not expression.strip():
        raise FilterError(1, "empty expression")
    return _Parser(expression).parse()
