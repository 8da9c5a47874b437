"""Cross-signing: the bot signs its own device with its account's self-signing key.

Matrix clients (Element first) show a message as trustworthy only when the device that
sent it is signed by its owner's self-signing key, itself signed by the owner's master
key; with "exclude insecure devices" on, messages from any other device do not even
decrypt. matrix-nio does not do cross-signing, so the bot does it here, once per start:

1. read the account's cross-signing keys and this device's keys from the homeserver;
2. no keys on the account: make a master, a self-signing and a user-signing key, keep
   them (0600, in the crypto directory) *before* uploading them, then upload;
3. the account's keys are the ones the bot keeps: sign this device if it is not signed
   yet (a new device id, a restored backup, a first start);
4. the account has keys the bot does not hold (made from another client): leave them,
   say how to proceed — never overwrite someone's identity unasked.

Signatures are made and checked by signedjson (ed25519 from PyNaCl, canonical JSON):
no cryptography is written here.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from signedjson.key import (
    decode_signing_key_base64,
    decode_verify_key_base64,
    encode_signing_key_base64,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json

from bot.errors import NewsbotError, TemporaryTransportError
from bot.filemodes import write_private

log = logging.getLogger(__name__)

KEYS_FILE = "cross-signing.json"
USAGES = ("master", "self_signing", "user_signing")


class CrossSigningError(NewsbotError):
    """The homeserver refused a cross-signing request for good."""


@dataclass(frozen=True, slots=True)
class CrossSigningStatus:
    """Whether this device is signed by its account's self-signing key, and why not."""

    signed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class CrossSigningKeys:
    """The account's three private cross-signing keys (ed25519 signing keys, whose
    "version" is their public key, as cross-signing key ids are)."""

    master: Any
    self_signing: Any
    user_signing: Any

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        return cls(*(_with_public_version(generate_signing_key("new")) for _ in USAGES))

    @classmethod
    def load(cls, path: Path) -> CrossSigningKeys | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CrossSigningError(f"{path} cannot be read ({type(exc).__name__}); restore "
                                    "it from a backup") from exc
        try:
            return cls(*(_with_public_version(decode_signing_key_base64(
                "ed25519", "new", data[usage])) for usage in USAGES))
        except (KeyError, TypeError, ValueError) as exc:
            raise CrossSigningError(f"{path} is damaged; restore it from a backup") from exc

    def save(self, path: Path) -> None:
        write_private(path, json.dumps({
            usage: encode_signing_key_base64(key) for usage, key in self._by_usage().items()}))

    def public(self, usage: str) -> str:
        return str(self._by_usage()[usage].version)

    def _by_usage(self) -> dict[str, Any]:
        return {"master": self.master, "self_signing": self.self_signing,
                "user_signing": self.user_signing}


def _with_public_version(key: Any) -> Any:
    key.version = encode_verify_key_base64(get_verify_key(key))
    return key


def key_object(user_id: str, usage: str, public: str) -> dict[str, Any]:
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public}": public}}


def upload_body(user_id: str, keys: CrossSigningKeys) -> dict[str, Any]:
    """The body of ``keys/device_signing/upload``: the master key, and the two others
    signed by it."""
    master = key_object(user_id, "master", keys.public("master"))
    self_signing = sign_json(key_object(user_id, "self_signing", keys.public("self_signing")),
                             user_id, keys.master)
    user_signing = sign_json(key_object(user_id, "user_signing", keys.public("user_signing")),
                             user_id, keys.master)
    return {"master_key": master, "self_signing_key": self_signing,
            "user_signing_key": user_signing}


def public_key(key: dict[str, Any] | None) -> str | None:
    """The ed25519 public key of a cross-signing key object."""
    if not isinstance(key, dict) or not isinstance(key.get("keys"), dict):
        return None
    for key_id, value in key["keys"].items():
        if str(key_id).startswith("ed25519:") and isinstance(value, str):
            return value
    return None


def signed_by(obj: dict[str, Any], user_id: str, public: str | None) -> bool:
    """Does ``obj`` carry a valid signature of ``user_id``'s key ``public``?"""
    if public is None:
        return False
    try:
        verify_signed_json(obj, user_id, decode_verify_key_base64("ed25519", public, public))
    except (SignatureVerifyException, ValueError, TypeError):
        return False
    return True


def device_cross_signed(user_id: str, device: dict[str, Any], master: dict[str, Any] | None,
                        self_signing: dict[str, Any] | None) -> bool:
    """A device signed by its owner's self-signing key, which the owner's master key
    signed: what clients call "verified by its owner"."""
    master_public = public_key(master)
    ssk_public = public_key(self_signing)
    if master_public is None or ssk_public is None or self_signing is None:
        return False
    usage_ok = "self_signing" in self_signing.get("usage", []) and \
        "master" in (master or {}).get("usage", [])
    return usage_ok and signed_by(self_signing, user_id, master_public) and \
        signed_by(device, user_id, ssk_public)


def sign_device(device: dict[str, Any], user_id: str, keys: CrossSigningKeys) -> dict[str, Any]:
    """This device's keys with the self-signing key's signature added."""
    unsigned_free = {k: v for k, v in copy.deepcopy(device).items() if k != "unsigned"}
    return sign_json(unsigned_free, user_id, keys.self_signing)


class KeysApi:
    """The three requests cross-signing needs, on the homeserver's client API."""

    def __init__(self, homeserver: str, access_token: str) -> None:
        self._base = homeserver.rstrip("/") + "/_matrix/client/v3"
        self._token = access_token

    async def _post(self, what: str, path: str, body: dict[str, Any],
                    ) -> tuple[int, dict[str, Any]]:
        try:
            async with aiohttp.ClientSession() as http, http.post(
                    self._base + path, json=body, timeout=aiohttp.ClientTimeout(total=60),
                    headers={"Authorization": f"Bearer {self._token}"}) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except ValueError:
                    answer = None
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TemporaryTransportError(f"{what}: homeserver unreachable "
                                          f"({type(exc).__name__})") from exc
        if not isinstance(answer, dict) or (status >= 500 or status == 429):
            raise TemporaryTransportError(f"{what}: HTTP {status} from the homeserver")
        return status, answer

    async def query(self, user_id: str) -> dict[str, Any]:
        status, answer = await self._post("reading the account's keys", "/keys/query",
                                          {"device_keys": {user_id: []}})
        if status != 200:
            raise CrossSigningError(f"reading the account's keys: HTTP {status} "
                                    f"{answer.get('errcode', '')}")
        return answer

    async def upload_signing_keys(self, body: dict[str, Any], user_id: str,
                                  password: str | None) -> str | None:
        """Upload cross-signing keys; None when done, else why not (the homeserver wants
        a password that is not configured)."""
        what = "uploading cross-signing keys"
        status, answer = await self._post(what, "/keys/device_signing/upload", body)
        if status == 401 and "flows" in answer:
            # User-interactive auth: current homeservers ask for it only when the account
            # already has cross-signing keys (a reset).
            if password is None:
                return ("the homeserver asks for the account's password to replace its "
                        "cross-signing keys, and none is configured")
            auth = {"type": "m.login.password", "session": answer.get("session"),
                    "identifier": {"type": "m.id.user", "user": user_id},
                    "password": password}
            status, answer = await self._post(what, "/keys/device_signing/upload",
                                              {**body, "auth": auth})
        if status != 200:
            raise CrossSigningError(f"{what}: HTTP {status} {answer.get('errcode', '')} "
                                    f"{answer.get('error', '')}".strip())
        return None

    async def upload_signature(self, user_id: str, device_id: str,
                               signed: dict[str, Any]) -> None:
        what = "uploading this device's signature"
        status, answer = await self._post(what, "/keys/signatures/upload",
                                          {user_id: {device_id: signed}})
        failures = answer.get("failures") or {}
        if status != 200 or failures:
            raise CrossSigningError(f"{what}: HTTP {status} "
                                    f"{json.dumps(failures or answer)[:300]}")


async def ensure_device_signed(api: KeysApi, user_id: str, device_id: str, store_dir: Path,
                               *, password: str | None, reset: bool = False,
                               ) -> CrossSigningStatus:
    """Steps 1-4 of the module's docstring. ``reset``: replace the account's keys even
    when they were made elsewhere (needs the password on current homeservers)."""
    path = store_dir / KEYS_FILE
    pending_path = store_dir / (KEYS_FILE + ".new")
    keys = CrossSigningKeys.load(path)
    pending = CrossSigningKeys.load(pending_path)
    answer = await api.query(user_id)
    master = answer.get("master_keys", {}).get(user_id)
    device = answer.get("device_keys", {}).get(user_id, {}).get(device_id)
    if not isinstance(device, dict):
        return CrossSigningStatus(False, f"the homeserver has no keys for device {device_id}")
    if pending is not None and master is not None and \
            public_key(master) == pending.public("master"):
        # Uploaded by a start that died before it could keep them as its own.
        pending_path.replace(path)
        keys, pending = pending, None
    ours = keys is not None and public_key(master) == keys.public("master")
    if master is not None and not ours and not reset:
        return CrossSigningStatus(False, (
            "the account already has cross-signing keys that newsbot does not hold (set up "
            "from another client); they were left as they are. Made by another newsbot "
            "instance of this account: copy its crypto/cross-signing.json into this "
            "instance's crypto directory (mode 0600). Else, to let newsbot sign its device, "
            "replace them: run `newsbot run --reset-cross-signing` once (it needs "
            "matrix.password), or verify the device from that other client"))
    if not ours or reset:
        new = CrossSigningKeys.generate()
        # Kept before they are uploaded, and made the bot's own only once the homeserver
        # took them: a crash in between leaves neither an account with keys nobody holds
        # nor a bot that forgot the keys the account still has.
        new.save(pending_path)
        refused = await api.upload_signing_keys(upload_body(user_id, new), user_id,
                                                None if master is None else password)
        if refused:
            pending_path.unlink(missing_ok=True)
            return CrossSigningStatus(False, refused + "; set matrix.password and run "
                                      "`newsbot run --reset-cross-signing` once")
        pending_path.replace(path)
        keys = new
        log.info("cross-signing keys %s for %s", "replaced" if master else "created", user_id)
    else:
        assert keys is not None
        self_signing = answer.get("self_signing_keys", {}).get(user_id)
        if public_key(self_signing) != keys.public("self_signing"):
            return CrossSigningStatus(False, "the account's self-signing key is not the one "
                                      "newsbot holds; run `newsbot run --reset-cross-signing`")
    if not signed_by(device, user_id, keys.public("self_signing")):
        await api.upload_signature(user_id, device_id, sign_device(device, user_id, keys))
    return CrossSigningStatus(True, f"device {device_id} is signed by {user_id}'s "
                              "self-signing key")


async def device_status(api: KeysApi, user_id: str, device_id: str) -> CrossSigningStatus:
    """What a member's client would conclude about this device (for ``newsbot doctor``)."""
    answer = await api.query(user_id)
    master = answer.get("master_keys", {}).get(user_id)
    self_signing = answer.get("self_signing_keys", {}).get(user_id)
    device = answer.get("device_keys", {}).get(user_id, {}).get(device_id)
    if not isinstance(device, dict):
        return CrossSigningStatus(False, f"the homeserver has no keys for device {device_id}")
    if master is None:
        return CrossSigningStatus(False, "the account has no cross-signing keys")
    if device_cross_signed(user_id, device, master, self_signing):
        return CrossSigningStatus(True, f"device {device_id} is signed by {user_id}'s "
                                  "self-signing key")
    return CrossSigningStatus(False, f"device {device_id} is not signed by {user_id}'s "
                              "self-signing key")
