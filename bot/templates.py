"""Message templates: Jinja2 in a sandbox, with every mistake found before anything is posted.

A template writes HTML only. ``bot.render`` sanitises that HTML and derives the plain-text
body from it, so one template gives both parts of a message. This module knows nothing
of feed entries: the renderer hands it the field names, filters and globals it supplies,
which keeps the dependency one way (render -> templates).

Why Jinja2 rather than a hand-made format: a sandboxed, well-kept engine whose syntax
operators may already know, with line numbers in its errors.
"""

from __future__ import annotations

import difflib
import traceback
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, nodes
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import NewsbotError

__all__ = [
    "BUILTIN_TEMPLATES", "CompiledTemplate", "TemplateEngine", "TemplateProblem",
    "describe_failure",
]

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

    def render(self, context: Mapping[str, object], *, max_chars: int) -> tuple[str, bool]:
        """The output, and whether it was stopped at ``max_chars``.

        Streamed, so that a template looping over a long content cannot build an
        output of any size: what is past the cap would be cut from the message anyway.
        """
        chunks: list[str] = []
        size = 0
        for chunk in self._template.generate(context):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_chars:
                return "".join(chunks)[:max_chars], True
        return "".join(chunks), False


class TemplateEngine:
    """The sandboxed environment and the checks a template passes before it is used.

    ``fields`` are the variables every render provides; ``filters`` and ``globals`` are
    added to Jinja's own. Undefined values are errors (StrictUndefined), so a mistake
    shows in ``check-config`` instead of as an empty spot in a room.
    """

    def __init__(self, *, fields: Collection[str],
                 filters: Mapping[str, Callable[..., object]],
                 globals: Mapping[str, object]) -> None:
        self._env = ImmutableSandboxedEnvironment(
            autoescape=True,                # feed values are text; HTML fields are Markup
            undefined=StrictUndefined,
            trim_blocks=True, lstrip_blocks=True,
            keep_trailing_newline=False,
            # A missing value (no author, no date) prints as nothing, not as "None".
            finalize=lambda value: "" if value is None else value,
        )
        self._env.filters.update(filters)
        self._env.globals.update(globals)
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
