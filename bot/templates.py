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
widths, and the size that string methods and filters such as ``replace`` or ``join``
would make from their arguments), containers are bounded by what printing them writes,
joined strings and captured blocks are bounded before they are joined, everything a
render writes is counted, and a render has a time budget checked at
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
from collections.abc import (
    Callable,
    Collection,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
    Sized,
    ValuesView,
)
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
from jinja2.defaults import DEFAULT_FILTERS
from jinja2.meta import find_undeclared_variables
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Namespace, generate_lorem_ipsum, pass_context
from jinja2.visitor import NodeTransformer
from markupsafe import Markup, escape

from .template_sources import BUILTIN_TEMPLATES, TemplateProblem

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

# Nothing a template could load: it is self-contained, written in the config.
_NO_LOADING = {nodes.Extends: "extends", nodes.Include: "include", nodes.Import: "import",
               nodes.FromImport: "import"}


class TemplateLimitError(TemplateRuntimeError):
    """A template went past one of the limits above; it stopped there."""


# The deadline of the render running in this thread (None: no render, no deadline).
_DEADLINE: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "newsbot_template_deadline", default=None)


# Characters the render running in this thread has written with {{ }} so far.
_WRITTEN: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "newsbot_template_written", default=None)
# What a render may write in all, captured blocks included. The output streamed to the
# message stops at its own cap long before; a macro or {% set %} block keeps what it
# captures, and a loop writing a large value makes a copy of it at every step (escaping).
MAX_WRITTEN = 2 * MAX_SIZE


def _finalize(value: object) -> object:
    """What every ``{{ }}`` writes: None as nothing, and counted."""
    if value is None:
        return ""
    written = _WRITTEN.get()
    if written is not None:
        written[0] += _chars(value)
        if written[0] > MAX_WRITTEN:
            raise TemplateLimitError(f"the template wrote more than {MAX_WRITTEN:,} "
                                     "characters (in a macro or a block?)")
    return value


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
            if isinstance(seq, Sized) and isinstance(times, int) and times > 0:
                # [x] * n holds n references, but writes n copies of x when printed.
                _check_size("'*'", len(seq) * times)
                _check_size("'*'", _chars(seq) * times)
    elif operator == "+":
        if isinstance(left, Sized) and isinstance(right, Sized):
            _check_size("'+'", len(left) + len(right))
            _check_size("'+'", _chars(left) + _chars(right))
    elif operator == "%" and isinstance(left, str):
        _check_printf(left)
        _check_size("'%'", _printf_size(left, right))


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


# --- the size of what one C call would build, computed from its arguments ------------
#
# Bounding integers is not enough: 'a' * 1000 is small, but x.replace('a', x) makes a
# million characters and y.replace('a', x) a billion, in one call the time budget cannot
# interrupt. So before such a call the size of its result is computed from its arguments
# (a bound, counted in characters before any HTML escaping, which at most multiplies it
# by a small constant) and the call is refused over MAX_SIZE. Containers are bounded
# the same way when they are made: ``[x] * 1000`` holds a thousand references, but
# printing it writes a thousand copies of x.

_NESTING = 64                # containers in containers; templates need a few


@dataclass(slots=True)
class _Shape:
    """What ``str()`` of a value writes, as bounds: characters, values, nesting, and the
    longest dictionary key (pprint indents nested values by it)."""

    chars: int = 0
    values: int = 0
    depth: int = 0
    key: int = 0


def _shape(value: object, limit: int = MAX_SIZE) -> _Shape:
    """The shape of ``value``; counting stops soon after ``limit`` characters, so a value
    shared a million times inside nested lists costs little to measure."""
    shape = _Shape()
    seen: dict[int, int] = {}   # a container's characters, once measured (or in progress)

    def measure(item: object, depth: int) -> int:
        shape.values += 1
        if shape.values % 4096 == 0:
            _check_time()
        if isinstance(item, str):
            if depth == 0:
                return len(item)
            # Inside a container str() writes repr(): quotes and escapes.
            if item.isprintable():
                return len(item) + item.count("\\") + item.count("'") + 10
            return 10 * len(item) + 10
        if isinstance(item, bool) or item is None:
            return 5
        if isinstance(item, int):
            return item.bit_length() // 3 + 2
        if isinstance(item, float):
            return 25
        if isinstance(item, Namespace):
            inner: Any = object.__getattribute__(item, "_Namespace__attrs")
        elif isinstance(item, list | tuple | set | frozenset | dict | KeysView | ValuesView
                        | ItemsView):
            inner = item
        else:
            return 100  # <function ...>, <LoopContext ...>: a fixed-size repr
        if id(inner) in seen:
            return seen[id(inner)]
        if depth >= _NESTING:
            raise TemplateLimitError(f"values nested more than {_NESTING} deep")
        shape.depth = max(shape.depth, depth + 1)
        seen[id(inner)] = 5  # in progress: a cycle prints as '...'
        total = 20
        pairs = inner.items() if isinstance(inner, dict) else ((None, v) for v in inner)
        for key, child in pairs:
            if key is not None:
                key_chars = measure(key, depth + 1)
                shape.key = max(shape.key, key_chars)
                total += key_chars
            total += measure(child, depth + 1) + 2
            if total > limit:
                break
        seen[id(inner)] = total
        return total

    shape.chars = measure(value, 0)
    return shape


def _chars(value: object) -> int:
    return len(value) if isinstance(value, str) else _shape(value).chars


def _check_size(what: str, size: int) -> None:
    if size > MAX_SIZE:
        raise _too_big(what, size)


def _bounded_value(value: Any, what: str = "a list, tuple or dict") -> Any:
    """A container is refused when printing it would write more than the limit."""
    if isinstance(value, list | tuple | set | frozenset | dict | Namespace):
        _check_size(what, _chars(value))
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _replace_size(s: str, old: object, new: object, count: object) -> int:
    if isinstance(s, Markup):  # Markup.replace escapes its arguments
        old, new = escape(old), escape(new)
    old_text, new_text = _text(old), _text(new)
    matches = s.count(old_text) if old_text else len(s) + 1
    if isinstance(count, int) and count >= 0:
        matches = min(matches, count)
    return len(s) + matches * max(0, len(new_text) - len(old_text))


def _join_size(separator: object, items: Iterable[object]) -> int:
    size, gaps, step = 0, len(_text(separator)), 0
    if isinstance(items, str):  # its characters
        return len(items) + max(0, len(items) - 1) * gaps
    for item in items:
        size += _chars(item) + (gaps if step else 0)
        step += 1
        if size > MAX_SIZE:
            break
    return size


# A conversion of printf-style formatting, with its mapping key and conversion letter.
_PRINTF_FIELD = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)?",
                           re.DOTALL)


def _printf_size(fmt: str, values: object) -> int:
    """``fmt % values``: each conversion writes its value (or repr) and its width."""
    mapping = values if isinstance(values, Mapping) else None
    positional = list(values) if isinstance(values, tuple) else [values]
    size = len(fmt)
    for match in _PRINTF_FIELD.finditer(fmt):
        key, width, precision, conversion = match.groups()
        size += int(width) if width and width != "*" else 0
        if conversion == "%":
            continue
        if mapping is not None:
            value = mapping.get(key) if key is not None else mapping
        else:
            value = positional.pop(0) if positional else None
        chars = _shape(value).chars if conversion not in ("r", "a") else _shape([value]).chars
        if precision and precision != "*" and conversion == "s":
            chars = min(chars, int(precision))
        size += chars
        if size > MAX_SIZE:
            break
    return size


def _format_size(fmt: str, formatter: string.Formatter, args: Sequence[object],
                 kwargs: Mapping[str, object]) -> int:
    """``fmt.format(*args, **kwargs)``: each field writes its value (or repr), at least
    its width. Fields are looked up the way the sandbox will look them up."""
    size, auto = 0, 0
    try:
        fields = list(formatter.parse(fmt))
    except ValueError:
        return len(fmt)  # str.format refuses it itself
    for literal, name, spec, conversion in fields:
        size += len(literal)
        if name is None:
            continue
        if name == "" or name.startswith((".", "[")):
            name, auto = f"{auto}{name}", auto + 1
        try:
            value, _ = formatter.get_field(name, args, kwargs)
        except Exception:  # noqa: BLE001 - str.format reports it when it runs
            return size
        chars = _shape([value] if conversion in ("r", "a") else value).chars
        if spec and "{" in spec:
            nested = _format_size(spec, formatter, args, kwargs)
            _check_size("the format spec", nested)
            spec = formatter.vformat(spec, args, kwargs)
        widths = [int(n) for n in re.findall(r"\d+", spec or "")]
        size += max(chars, *widths) if widths else chars
        if size > MAX_SIZE:
            break
    return size


def _lines(s: str) -> int:
    return len(s.splitlines()) + 1


# str methods whose result can be far larger than the string: their result's size.
_STR_METHODS: dict[str, Callable[..., int]] = {
    "replace": lambda s, old="", new="", count=-1: _replace_size(s, old, new, count),
    "join": lambda s, items=(): _join_size(s, items),
    "center": lambda s, width=0, fill=" ": max(len(s), width),
    "ljust": lambda s, width=0, fill=" ": max(len(s), width),
    "rjust": lambda s, width=0, fill=" ": max(len(s), width),
    "zfill": lambda s, width=0: max(len(s), width),
    "expandtabs": lambda s, tabsize=8: len(s) + s.count("\t") * max(0, tabsize - 1),
    "translate": lambda s, table=None: len(s) * max(
        [len(v) if isinstance(v, str) else 1
         for v in (table.values() if isinstance(table, Mapping) else table or ())],
        default=1),
}


def _check_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    receiver = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(receiver, str) and name in _STR_METHODS:
        try:
            size = _STR_METHODS[name](receiver, *args, **kwargs)
        except TypeError:
            return  # wrong arguments: the method itself says so
        _check_size(f"str.{name}()", size)


def _lipsum_size(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> int:
    # Words are at most 15 characters; lipsum writes n paragraphs of up to max words.
    return n * max * 16


def _wordwrap_size(s: str, width: int = 79, break_long_words: bool = True,
                   wrapstring: str | None = None, break_on_hyphens: bool = True) -> int:
    # A line break per word at most, plus one per width characters of a long word.
    breaks = len(s.split()) + len(s) // max(width, 1) + _lines(s)
    return len(s) + breaks * len(wrapstring if wrapstring is not None else "\n")


def _indent_size(s: str, width: int | str = 4, first: bool = False,
                 blank: bool = False) -> int:
    indention = len(width) if isinstance(width, str) else width
    return len(s) + _lines(s) * (indention + 1)


def _urlize_size(value: str, trim_url_limit: int | None = None, nofollow: bool = False,
                 target: str | None = None, rel: str | None = None,
                 extra_schemes: Iterable[str] | None = None) -> int:
    # Every word may become a link: its address twice, the tag and its attributes.
    extra = len(_text(target or "")) + len(_text(rel or "")) + 60
    return 3 * len(value) + len(value.split()) * extra


def _json_size(value: object, indent: int | None = None) -> int:
    shape = _shape(value)
    return 2 * shape.chars + shape.values * (shape.depth * (indent or 0) + 1)


def _pprint_size(value: object) -> int:
    shape = _shape(value)
    return shape.chars + shape.values * (shape.depth * (shape.key + 4) + 1)


def _batch_size(value: Sized, count: int, fill_with: object = None) -> int:
    return _chars(value) + (count * _chars([fill_with]) if fill_with is not None else 0)


# Filters whose result can be far larger than their value: their result's size, from
# the value (as a string where the filter makes it one) and the arguments.
_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "replace": lambda s, old, new, count=None: _replace_size(s, old, new, count),
    "join": lambda value, d="", attribute=None: _join_size(d, value),
    "indent": _indent_size,
    "wordwrap": _wordwrap_size,
    "format": lambda value, *args, **kwargs: _printf_size(
        _text(value), kwargs or args),
    "urlize": _urlize_size,
    "tojson": _json_size,
    "pprint": _pprint_size,
    "batch": _batch_size,
    "slice": _batch_size,
}
# The filters above that make their value a string first (and escape it, for replace).
_STRING_VALUE = frozenset({"replace", "indent", "wordwrap", "format", "urlize"})


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


def _bounded_concat(chunks: Iterable[str]) -> str:
    """What a macro, a call block, a ``{% set %}`` block or a ``{% filter %}`` block
    returns: the output it captured, which a loop can make of a million references to
    one large string, joined in one C call. Counted before it is joined."""
    parts = chunks if isinstance(chunks, list) else list(chunks)
    size = 0
    for part in parts:
        size += len(part)
        if size > MAX_SIZE:
            raise _too_big("a macro or block", size)
    return "".join(parts)


# Filters the engine puts around loops, joins and container literals (not something a
# template writes).
_LOOP_FILTER, _JOIN_FILTER = "newsbot_budgeted", "newsbot_bounded_join"
_VALUE_FILTER = "newsbot_bounded_value"


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

    # [x, x, x] nested a few times is a small template and an enormous value.
    def _bounded(self, node: nodes.Expr) -> nodes.Node:
        self.generic_visit(node)
        if getattr(node, "ctx", "load") != "load":
            return node  # an assignment target ({% set a, b = ... %})
        return nodes.Filter(node, _VALUE_FILTER, [], [], None, None, lineno=node.lineno)

    visit_List = visit_Tuple = visit_Dict = _bounded


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the limits checked first. Taking the context also keeps Jinja
    from computing the filter at compile time on constant arguments, where no budget
    applies (``{{ 'a' | center(10**9) }}`` would be built by the compiler)."""
    kind = getattr(getattr(func, "jinja_pass_arg", None), "name", None)
    # Only Jinja's own filters: a filter the renderer adds is its own business.
    estimate = _FILTER_SIZES.get(name) if func is DEFAULT_FILTERS.get(name) else None

    @pass_context
    @functools.wraps(func)
    def guarded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        _check_arguments((*args, *kwargs.values()), f"the filter {name!r}")
        if name == "format" and isinstance(value, str):
            _check_printf(value)
        if estimate is not None:
            if not isinstance(value, Sized) and name in ("join", "batch", "slice"):
                value = list(value)  # measured, then handed on
            _check_size(f"the filter {name!r}",
                        _filter_size(estimate, name, context, value, args, kwargs))
        if name == "sum" and kwargs.get("start", args[1] if len(args) > 1 else 0) != 0:
            # sum(start=[]) adds lists in one C loop, quadratic and beyond any budget.
            raise TemplateLimitError("the filter 'sum' adds numbers only")
        if kind == "context":
            result = func(context, value, *args, **kwargs)
        elif kind == "eval_context":
            result = func(context.eval_ctx, value, *args, **kwargs)
        elif kind == "environment":
            result = func(context.environment, value, *args, **kwargs)
        else:
            result = func(value, *args, **kwargs)
        return _bounded_value(result, f"the filter {name!r}")

    return guarded


def _filter_size(estimate: Callable[..., int], name: str, context: Context, value: Any,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    probe = value
    if name == "replace":
        # As do_replace makes its value a string: escaped when only the arguments are
        # markup, so that Markup.replace escapes them in turn.
        old, new = (list(args) + [kwargs.get("old"), kwargs.get("new")])[:2]
        if not context.eval_ctx.autoescape:
            probe = str(value)
        elif (hasattr(old, "__html__") or hasattr(new, "__html__")) \
                and not hasattr(value, "__html__"):
            probe = escape(value)
        else:
            probe = _text(value)
    elif name in _STRING_VALUE:
        probe = _text(value)
    try:
        return estimate(probe, *args, **kwargs)
    except TypeError:
        return 0  # wrong arguments: the filter itself says so


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the limits and the time budget."""

    # Intercepted operators are also never folded at compile time (nodes.BinExpr).
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    # Every block a template captures (macros, {% set %} blocks...) is joined by this.
    concat = staticmethod(_bounded_concat)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        if obj is not _bounded_range:
            _check_arguments((*args, *kwargs.values()), "a call")
        if obj is generate_lorem_ipsum:
            try:
                _check_size("lipsum()", _lipsum_size(*args, **kwargs))
            except TypeError:
                pass  # wrong arguments: lipsum says so
        if getattr(obj, "__name__", "") == "join" and args and not isinstance(args[0], Sized):
            args = (list(args[0]), *args[1:])  # a generator: measured, then handed on
        _check_method(obj, args, kwargs)
        return _bounded_value(super().call(context, obj, *args, **kwargs), "a call")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        _check_format(fmt)
        formatter = SandboxedFormatter(self)
        is_map = value.__name__ == "format_map"

        @functools.wraps(wrapped)
        def bounded(*args: Any, **kwargs: Any) -> str:
            if is_map and len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
                size = _format_size(fmt, formatter, (), args[0])
            else:
                size = _format_size(fmt, formatter, args, kwargs)
            _check_size(f"str.{value.__name__}()", size)
            return wrapped(*args, **kwargs)

        return bounded


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
        written = _WRITTEN.set([0])
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
            _WRITTEN.reset(written)


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
            finalize=_finalize,
        )
        self._env.filters.update(filters)
        self._env.filters.update({name: _guard_filter(name, func)
                                  for name, func in self._env.filters.items()})
        self._env.filters[_LOOP_FILTER] = _budgeted
        self._env.filters[_JOIN_FILTER] = _bounded_join
        self._env.filters[_VALUE_FILTER] = _bounded_value
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
