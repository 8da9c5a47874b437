"""The built-in templates' sources and the error of a template that cannot be used.

Apart from bot.templates (the Jinja2 sandbox) so that what only names or reports a
template (the config's checks, OPML) does not load Jinja2: it is loaded with the first
template compiled.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import NewsbotError

__all__ = ["BUILTIN_TEMPLATES", "TemplateProblem"]

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


class TemplateProblem(NewsbotError):
    """A template that cannot be used; ``line`` is a line of the template (1-based)."""

    def __init__(self, detail: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {detail}" if line else detail)
        self.detail = detail
        self.line = line
