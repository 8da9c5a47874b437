"""An idle bot does not hold what only some configurations or moments need (bench line 6):
a fresh interpreter that imports the whole bot and reads the example config loads none of
these libraries until they are used."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.botkit import ROOT

# Each is loaded when first needed: the listener, a scrape, a template, a body to read, a
# misspelt config key to suggest the right one for, an xmpp: section.
LAZY = ("aiohttp.web", "prometheus_client", "jinja2", "nh3", "feedparser", "listparser",
        "difflib", "slixmpp",
        "bot.http", "bot.websub", "bot.exposition", "bot.templates", "bot.opml",
        "bot.transport.xmpp", "bot.transport.networks")

_PROBE = """
import json, sys
import bot.app, bot.cli, bot.transport.matrix
from bot.config import load_config_text
from bot.render import entry_line, html_to_text
load_config_text(open("config.example.yaml").read(), source="config.example.yaml",
                 environ={"NEWSBOT_ACCESS_TOKEN": "t"})
before = sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)
html_to_text("<p>a</p>")                  # sanitising loads nh3, and nothing else
after = sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)
print(json.dumps([before, after]))
"""


def test_the_bot_loads_no_optional_library_until_it_is_used() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(LAZY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == []
    assert after == ["nh3"]
