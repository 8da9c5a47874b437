"""``newsbot login``: log in once with the password, keep only the token.

The password is asked in the terminal (or read from standard input when it is not one,
for scripts), sent once to the homeserver and kept nowhere. The access token is written
to a 0600 file in the format ``matrix.access_token_file`` reads (the token alone), and
the command prints the two lines the configuration needs: ``access_token_file`` and
``device_id``. Neither secret is ever printed or logged.

The configuration is read leniently here: before the first login it names a token file
that does not exist yet and may lack ``device_id``, which ``check-config`` refuses.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bot.errors import ConfigError
from bot.filemodes import write_private

if TYPE_CHECKING:
    from bot.transport.matrix.session import Session

TOKEN_FILENAME = "newsbot.token"

_USER_ID_RE = re.compile(r"@[^\s:]+:\S+")
_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class LoginTarget:
    homeserver: str
    user_id: str
    device_id: str | None       # the configured one, reused so the device keeps its keys
    token_file: Path            # where the token goes
    token_file_setting: str     # as to write it in the configuration
    uses_password: bool         # the configuration still holds a password
    uses_token: bool            # ... or an access_token


def login_target(config_path: Path, token_file: Path | None = None,
                 environ: dict[str, str] | None = None) -> LoginTarget:
    """What to log in as and where the token goes, from the configuration's matrix
    section; raises ConfigError naming every missing piece."""
    env = dict(os.environ) if environ is None else environ
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ConfigError([f"{config_path}: cannot read: {exc.strerror or 'error'}"]) from None
    except (UnicodeDecodeError, yaml.YAMLError):
        raise ConfigError([f"{config_path}: not a readable YAML file (see "
                           "`newsbot check-config`)"]) from None
    matrix = data.get("matrix") if isinstance(data, dict) else None
    if not isinstance(matrix, dict):
        raise ConfigError([f"{config_path}: no matrix: section"])
    problems: list[str] = []

    def text(key: str) -> str | None:
        value = matrix.get(key)
        if value is None:
            return None
        expanded = _expand(str(value), env)
        if expanded is None:
            problems.append(f"{config_path}: matrix.{key}: uses an environment variable "
                            "that is not set")
        return expanded

    homeserver, user_id = text("homeserver"), text("user_id")
    if not homeserver or not homeserver.startswith(("https://", "http://")):
        problems.append(f"{config_path}: matrix.homeserver: needs the homeserver's "
                        "http(s) URL")
    if not user_id or not _USER_ID_RE.fullmatch(user_id):
        problems.append(f"{config_path}: matrix.user_id: needs the bot's Matrix id, like "
                        "@newsbot:example.org")
    device_id = text("device_id") or None
    base = config_path.absolute().parent
    configured_file = text("access_token_file")
    if token_file is not None:
        path = token_file.absolute()
    elif configured_file:
        path = base / Path(configured_file.strip()).expanduser()   # as the loader reads it
    else:
        path = base / TOKEN_FILENAME
    if problems:
        raise ConfigError(problems)
    assert homeserver is not None and user_id is not None
    try:
        setting = str(path.relative_to(base))
    except ValueError:
        setting = str(path)
    if configured_file and token_file is None:
        setting = configured_file
    return LoginTarget(homeserver.rstrip("/"), user_id, device_id, path, setting,
                       uses_password=_set(matrix, "password"),
                       uses_token=_set(matrix, "access_token"))


def _set(matrix: dict[str, Any], key: str) -> bool:
    return matrix.get(key) not in (None, "")


def _expand(value: str, env: dict[str, str]) -> str | None:
    """``${VAR}`` as the configuration's loader reads it; None when VAR is unset."""
    missing = False

    def one(match: re.Match[str]) -> str:
        nonlocal missing
        if match.group(0) == "$$":
            return "$"
        found = env.get(match.group(1))
        if found is None:
            missing = True
            return ""
        return found

    result = _ENV_RE.sub(one, value)
    return None if missing else result


def read_password(user_id: str) -> str:
    """The password from the terminal without echo, or one line of standard input."""
    if sys.stdin.isatty():
        import getpass
        return getpass.getpass(f"Password of {user_id}: ")
    return sys.stdin.readline().rstrip("\r\n")


def instructions(target: LoginTarget, config_path: Path, device_id: str) -> str:
    """What the operator puts in the configuration after a login."""
    lines = [f"In the matrix: section of {config_path}, put:",
             f"  access_token_file: {target.token_file_setting}",
             f"  device_id: {device_id}"]
    remove = [key for key, used in (("password", target.uses_password),
                                    ("access_token", target.uses_token)) if used]
    if remove:
        lines.append(f"and remove {' and '.join(k + ':' for k in remove)} (one way to "
                     "authenticate at a time; no password need stay in any file).")
    if target.device_id and target.device_id != device_id:
        lines.append(f"The device changed from {target.device_id}: encrypted rooms see a new "
                     "device, with keys of its own made at the next start.")
    return "\n".join(lines)


async def log_in(target: LoginTarget, password: str) -> Session:
    """One password login as ``target``'s account (and device, when it names one)."""
    from bot.config import MatrixConfig
    from bot.transport.matrix.session import password_login
    config = MatrixConfig(homeserver=target.homeserver, user_id=target.user_id,
                          access_token=None, password=None, device_id=target.device_id)
    return await password_login(config, password)


def save_token(target: LoginTarget, session: Session) -> None:
    """The token alone, as ``matrix.access_token_file`` reads it, in a 0600 file."""
    write_private(target.token_file, session.access_token + "\n")
