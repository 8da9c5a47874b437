"""Message templates: Jinja2 in a sandbox, with every mistake found before anything is posted.

A template writes HTML only. ``bot.render`` sanitises that HTML and derives the plain-text
body from it, so one template gives both parts of a message. This module knows nothing
of feed entries: the renderer hands it the field names, filters and globals it supplies,
which keeps the dependency one way (render -> templates).

Why Jinja2 rather than a hand-made format: a sandboxed, well-kept engine whose syntax
operators may already know, with line numbers in its errors.

Jinja's sandbox keeps a template from reaching Python's internals, not from using the
machine: ``{{ 'a' * 10**8 }}`` or nested ``range(100000)`` loops are valid templates.
So every operation that can build a large value is bounded before it runs (``*``,
``**``, ``+``, ``%``, ``range``, integer arguments of calls and filters, format
widths), joined strings are bounded after, and a render has a time budget checked at
every loop step, call, operator and attribute: a template that goes past it stops with
an error (``check-config`` refuses it; a feed falls back to the default template).
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import math
import re
import string
import time
import traceback
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    TemplateRuntimeError,
    TemplateSyntaxError,
    nodes,
)
from jinja2.meta import find_undeclared_variables
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_context
from jinja2.visitor import NodeTransformer

from .errors import NewsbotError

__all__ = [
    "BUILTIN_TEMPLATES", "MAX_RANGE", "MAX_SIZE", "RENDER_SECONDS", "CompiledTemplate",
    "TemplateEngine", "TemplateLimitError", "TemplateProblem", "describe_failure",
]

# A message is at most 64 KiB: no step of a template needs values far beyond that.
MAX_SIZE = 1_000_000         # characters or items one operation may build
MAX_INT_BITS = 4096          # integers a template may compute (about 1,200 digits)
MAX_RANGE = 10_000           # numbers in one range()
RENDER_SECONDS = 1.0         # one render; normal templates take a millisecond

# The Jinja filename of templates given as text; runtime errors carry it in their
# traceback, which is how a failure is traced back to its template line.
_FILENAME = "<template>"

# Title, then "feed · date" and "by author" in italics, all in one paragraph; then the
# summary (or, with `content: full`, the whole content); then the link. Whitespace control
# keeps the output free of stray newlines: what the template writes is what is sent.
_HEADER = """\
{%- set where = [feed_title or "", date] | select | join(" · ") -%}
{%- set byline = t("by_author", author=author)
      if author and author | lower != (feed_title or "") | lower else "" -%}
<p><strong>
{%- if link %}<a href="{{ link }}">{{ title }}</a>{% else %}{{ title }}{% endif -%}
</strong>
{%- if where or byline %}<br>
  {%- if where %}<em>{{ where }}</em>{% endif %}
  {%- if where and byline %} · {% endif %}
  {%- if byline %}<em>{{ byline }}</em>{% endif %}
{%- endif %}</p>
"""
_FOOTER = """\
{%- if link %}<p><a href="{{ link }}">{{ t("read_more") }}</a></p>{% endif -%}
"""

BUILTIN_TEMPLATES: Mapping[str, str] = {
    "default": _HEADER + "{{- content if full else summary -}}\n" + _FOOTER,
    "compact": """\
{%- if link %}<a href="{{ link }}">{{ title }}</a>{% else %}{{ title }}{% endif -%}
{%- if date %} · {{ date }}{% endif -%}
""",
    "full": _HEADER + "{{- content -}}\n" + _FOOTER,
}

# Nothing a template could load: it is self-contained, written in the config.
_NO_LOADING = {nodes.Extends: "extends", nodes.Include: "include", nodes.Import: "import",
               nodes.FromImport: "import"}


class TemplateProblem(NewsbotError):
    """A template that cannot be used; ``line`` is a line of the template (1-based)."""

    def __init__(self, detail: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {detail}" if line else detail)
        self.detail = detail
        self.line = line


class TemplateLimitError(TemplateRuntimeError):
    """A template went past one of the limits above; it stopped there."""


# The deadline of the render running in this thread (None: no render, no deadline).
_DEADLINE: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "newsbot_template_deadline", default=None)


def _check_time() -> None:
    budget = _DEADLINE.get()
    if budget is not None and time.monotonic() > budget[0]:
        raise TemplateLimitError(f"the template took more than {budget[1]:g} s to render "
                                 "(too many loop steps or calls?)")


def _too_big(what: str, size: float) -> TemplateLimitError:
    return TemplateLimitError(f"{what} would make a value of {size:,.0f} characters or "
                              f"items; the limit is {MAX_SIZE:,}")


def _check_int(value: object, what: str) -> None:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimitError(f"{what}: a number over {MAX_INT_BITS} bits")


def _check_binop(operator: str, left: object, right: object) -> None:
    if operator == "**":
        if isinstance(left, int | float) and isinstance(right, int) and right > 0 \
                and abs(left) > 1:
            bits = right * math.log2(abs(left))
            if bits > MAX_INT_BITS:
                raise TemplateLimitError(f"'**' would make a number of about {bits:,.0f} "
                                         f"bits; the limit is {MAX_INT_BITS}")
    elif operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimitError(f"'*' would make a number over {MAX_INT_BITS} bits")
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, Sized) and isinstance(times, int) \
                    and len(seq) * times > MAX_SIZE:
                raise _too_big("'*'", len(seq) * times)
    elif operator == "+":
        if isinstance(left, Sized) and isinstance(right, Sized) \
                and len(left) + len(right) > MAX_SIZE:
            raise _too_big("'+'", len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        _check_printf(left)


# A printf-style conversion: its width and precision are what can make it large.
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(fmt: str) -> None:
    for match in _PRINTF.finditer(fmt):
        for number in match.groups():
            if number == "*" or (number is not None and int(number) > MAX_SIZE):
                raise TemplateLimitError(f"the format {match.group(0)[:20]!r} has a width "
                                         f"over {MAX_SIZE:,} (or one given as '*')")


def _check_format(fmt: str) -> None:
    """The same for ``str.format``: ``'{:>1000000000}'`` is computed in one C call."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format will refuse it itself
    for _, _, spec, _ in fields:
        if spec and any(int(n) > MAX_SIZE for n in re.findall(r"\d+", spec)):
            raise TemplateLimitError(f"the format spec {spec[:20]!r} has a width over "
                                     f"{MAX_SIZE:,}")
        if spec and "{" in spec:
            _check_format(spec)


def _check_arguments(args: Iterable[object], what: str) -> None:
    # 'a'.center(10**9), indent(width=10**9): a large count is a large value.
    for value in args:
        if isinstance(value, int) and abs(value) > MAX_SIZE:
            raise TemplateLimitError(f"{what}: the number {value:,} is over {MAX_SIZE:,}")


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimitError(f"range() of {len(numbers):,} numbers; the limit is "
                                 f"{MAX_RANGE:,}")
    return numbers


def _budgeted(items: Iterable[Any]) -> Iterator[Any]:
    """What every ``{% for %}`` iterates: the time budget is checked at each step."""
    for item in items:
        _check_time()
        yield item


def _bounded_join(value: Any) -> Any:
    """What every ``~`` gives: joined strings are bounded (after, but from operands
    that were bounded, so at most twice the limit is ever built)."""
    if isinstance(value, Sized) and len(value) > MAX_SIZE:
        raise _too_big("'~'", len(value))
    return value


# Filters the engine puts around loops and joins (not something a template writes).
_LOOP_FILTER, _JOIN_FILTER = "newsbot_budgeted", "newsbot_bounded_join"


class _Guards(NodeTransformer):
    """Puts the loop and join checks into a parsed template."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None,
                                 lineno=node.iter.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(node, _JOIN_FILTER, [], [], None, None, lineno=node.lineno)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the limits checked first. Taking the context also keeps Jinja
    from computing the filter at compile time on constant arguments, where no budget
    applies (``{{ 'a' | center(10**9) }}`` would be built by the compiler)."""
    kind = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context
    @functools.wraps(func)
    def guarded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        _check_arguments((*args, *kwargs.values()), f"the filter {name!r}")
        if name == "format" and isinstance(value, str):
            _check_printf(value)
        if name == "sum" and kwargs.get("start", args[1] if len(args) > 1 else 0) != 0:
            # sum(start=[]) adds lists in one C loop, quadratic and beyond any budget.
            raise TemplateLimitError("the filter 'sum' adds numbers only")
        if kind == "context":
            return func(context, value, *args, **kwargs)
        if kind == "eval_context":
            return func(context.eval_ctx, value, *args, **kwargs)
        if kind == "environment":
            return func(context.environment, value, *args, **kwargs)
        return func(value, *args, **kwargs)

    return guarded


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the limits and the time budget."""

    # Intercepted operators are also never folded at compile time (nodes.BinExpr).
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        if obj is not _bounded_range:
            _check_arguments((*args, *kwargs.values()), "a call")
        return super().call(context, obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped


def _suggest(name: str, known: Iterable[str]) -> str:
    hint = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _template_line(exc: BaseException) -> int | None:
    # Jinja rewrites tracebacks so that template code appears as frames of _FILENAME
    # at the template's own line numbers; the innermost one is where it failed.
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__)
             if frame.filename == _FILENAME]
    return lines[-1] if lines else None


def describe_failure(exc: BaseException) -> TemplateProblem:
    """A runtime failure of a template as a problem: one line, its template line."""
    if isinstance(exc, TemplateProblem):
        return exc
    message = str(exc).strip() if isinstance(exc, TemplateError) else ""
    if not message:
        message = f"{type(exc).__name__}: {str(exc)[:200]}".rstrip(": ")
    return TemplateProblem(message.splitlines()[0].rstrip("."), _template_line(exc))


@dataclass(frozen=True, slots=True, eq=False)
class CompiledTemplate:
    """A template that passed the static checks."""

    name: str                     # a built-in's name, or "custom"
    source: str
    fields: frozenset[str]        # the fields it reads: the renderer computes only those
    _template: Template

    def render(self, context: Mapping[str, object], *, max_chars: int,
               seconds: float = RENDER_SECONDS) -> tuple[str, bool]:
        """The output, and whether it was stopped at ``max_chars``.

        Streamed, so that a template looping over a long content cannot build an
        output of any size: what is past the cap would be cut from the message anyway.
        Raises TemplateLimitError when the render takes more than ``seconds`` (checked
        as it runs, so the render stops there) or builds a value over the limits.
        """
        token = _DEADLINE.set((time.monotonic() + seconds, seconds))
        try:
            chunks: list[str] = []
            size = 0
            for chunk in self._template.generate(context):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_chars:
                    return "".join(chunks)[:max_chars], True
                _check_time()
            return "".join(chunks), False
        finally:
            _DEADLINE.reset(token)


class TemplateEngine:
    """The sandboxed environment and the checks a template passes before it is used.

    ``fields`` are the variables every render provides; ``filters`` and ``globals`` are
    added to Jinja's own. Undefined values are errors (StrictUndefined), so a mistake
    shows in ``check-config`` instead of as an empty spot in a room.
    """

    def __init__(self, *, fields: Collection[str],
                 filters: Mapping[str, Callable[..., object]],
                 globals: Mapping[str, object]) -> None:
        self._env = _BoundedSandbox(
            autoescape=True,                # feed values are text; HTML fields are Markup
            undefined=StrictUndefined,
            trim_blocks=True, lstrip_blocks=True,
            keep_trailing_newline=False,
            # A missing value (no author, no date) prints as nothing, not as "None".
            finalize=lambda value: "" if value is None else value,
        )
        self._env.filters.update(filters)
        self._env.filters.update({name: _guard_filter(name, func)
                                  for name, func in self._env.filters.items()})
        self._env.filters[_LOOP_FILTER] = _budgeted
        self._env.filters[_JOIN_FILTER] = _bounded_join
        self._env.globals.update(globals)
        self._env.globals["range"] = _bounded_range
        self._fields = frozenset(fields)

    @property
    def known_names(self) -> frozenset[str]:
        return self._fields | frozenset(self._env.globals)

    def compile(self, source: str, *, name: str = "custom") -> CompiledTemplate:
        """Parse and check ``source``; raises TemplateProblem with the template line."""
        try:
            tree = self._env.parse(source, filename=_FILENAME)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(exc.message or "syntax error", exc.lineno) from None
        self._check(tree)
        tree = _Guards().visit(tree)
        try:
            template = self._env.from_string(tree)
        except TemplateSyntaxError as exc:  # what only the compiler sees
            raise TemplateProblem(exc.message or "syntax error", exc.lineno) from None
        used = find_undeclared_variables(tree) & self._fields
        return CompiledTemplate(name, source, frozenset(used), template)

    def _check(self, tree: nodes.Template) -> None:
        # Jinja only fails on an unknown filter or variable when that spot is rendered
        # (an unknown filter inside an {% if %} is a runtime error since Jinja 3). Looking
        # at the whole tree reports every spot, rendered or not.
        for loading in tree.find_all(tuple(_NO_LOADING)):
            raise TemplateProblem(
                f"{{% {_NO_LOADING[type(loading)]} %}} is not available: a template is "
                "self-contained", loading.lineno)
        for call in tree.find_all((nodes.Filter, nodes.Test)):
            assert isinstance(call, nodes.Filter | nodes.Test)
            known = self._env.filters if isinstance(call, nodes.Filter) else self._env.tests
            if call.name not in known:
                kind = "filter" if isinstance(call, nodes.Filter) else "test"
                raise TemplateProblem(f"unknown {kind} {call.name!r}"
                                      f"{_suggest(call.name, known)}", call.lineno)
        unknown = find_undeclared_variables(tree) - self.known_names
        if unknown:
            first = min((n for n in tree.find_all(nodes.Name) if n.name in unknown),
                        key=lambda n: n.lineno)
            fields = ", ".join(sorted(self._fields))
            raise TemplateProblem(f"unknown field {first.name!r}"
                                  f"{_suggest(first.name, self.known_names)}; the fields "
                                  f"are: {fields}", first.lineno)
