"""Every sentence the bot writes to members, in French and in English.

A message exists in both languages or not at all: a test checks that no key is missing
in either, so a room never gets a mixed-language answer.
"""

from __future__ import annotations

LANGUAGES = ("en", "fr")

MESSAGES: dict[str, dict[str, str]] = {
    "untitled": {"en": "(untitled)", "fr": "(sans titre)"},
    "read_more": {"en": "Read more", "fr": "Lire la suite"},
    "feed_gone": {
        "en": "⚠️ The feed “{name}” ({url}) is gone (HTTP 410 Gone): newsbot has stopped "
              "fetching it. A moderator can give it a new address in the configuration.",
        "fr": "⚠️ Le flux « {name} » ({url}) n’existe plus (HTTP 410 Gone) : newsbot a "
              "cessé de le consulter. Un·e modérateur·ice peut lui donner une nouvelle "
              "adresse dans la configuration.",
    },
}


def text(key: str, language: str, **values: object) -> str:
    table = MESSAGES[key]
    template = table.get(language) or table["en"]
    return template.format(**values)
