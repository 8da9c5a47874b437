"""State files are private (0600 files, 0700 directories) whatever existed before, and the
crypto store's pickle key is random, kept in a 0600 file, and migrated without losing the
device's identity, even across a crash at any point of the migration."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import nio
import pytest
from nio.crypto import InboundGroupSession, OlmAccount, OutboundGroupSession, OutboundSession

from bot.errors import StorageError
from bot.store import SqliteStore
from bot.store.sqlite import DB_FILENAME
from bot.transport.matrix import crypto as matrix_crypto
from bot.transport.matrix.crypto import (
    NIO_DEFAULT_PICKLE_KEY,
    PICKLE_KEY_FILE,
    STORE_NAME,
    CryptoStoreError,
    PolicyStore,
    prepare_pickle_key,
)

USER, DEVICE = "@newsbot:example.org", "NEWSBOTDEV"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual umask of a service: files 0644 and directories 0755 unless asked."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("loose_umask")
async def test_a_new_database_in_an_existing_0755_directory_is_private(tmp_path: Path) -> None:
    storage = tmp_path / "state"
    storage.mkdir(mode=0o755)
    storage.chmod(0o755)
    store = SqliteStore.open(storage)
    await store.ensure_feed("news", "https://example.org/feed")   # the -wal and -shm appear
    db = storage / DB_FILENAME
    wal, shm = db.with_name(DB_FILENAME + "-wal"), db.with_name(DB_FILENAME + "-shm")
    assert wal.exists() and shm.exists()
    assert mode(storage) == 0o700
    assert (mode(db), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    store.close()


@pytest.mark.usefixtures("loose_umask")
async def test_an_older_database_readable_by_all_is_tightened(tmp_path: Path) -> None:
    storage = tmp_path / "state"
    SqliteStore.open(storage).close()
    storage.chmod(0o755)
    files = [storage / (DB_FILENAME + suffix) for suffix in ("", "-wal", "-shm")]
    for path in files:
        path.touch()
        path.chmod(0o644)
    store = SqliteStore.open(storage)
    await store.ensure_feed("news", "https://example.org/feed")
    assert mode(storage) == 0o700
    assert [mode(p) for p in files] == [0o600] * 3
    store.close()


def test_a_storage_directory_that_cannot_be_made_private_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = tmp_path / "state"
    storage.mkdir(mode=0o755)
    storage.chmod(0o755)

    def refused(self: Path, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")   # another user's directory

    monkeypatch.setattr(Path, "chmod", refused)
    with pytest.raises(StorageError, match="make private"):
        SqliteStore.open(storage)


# --- the pickle key -------------------------------------------------------------------


def make_old_store(directory: Path) -> dict[str, object]:
    """A crypto store as newsbot made it before: nio's default pickle key, an account,
    an Olm session and a Megolm inbound session (a room key)."""
    directory.mkdir(parents=True, exist_ok=True)
    store = PolicyStore(USER, DEVICE, str(directory), NIO_DEFAULT_PICKLE_KEY, STORE_NAME)
    account, peer = OlmAccount(), OlmAccount()
    peer.generate_one_time_keys(1)
    one_time_key = next(iter(peer.one_time_keys["curve25519"].values()))
    session = OutboundSession(account, peer.identity_keys["curve25519"], one_time_key)
    outbound = OutboundGroupSession()
    inbound = InboundGroupSession(outbound.session_key, account.identity_keys["ed25519"],
                                  account.identity_keys["curve25519"], "!room:example.org")
    store.save_account(account)
    store.save_session(peer.identity_keys["curve25519"], session)
    store.save_inbound_group_session(inbound)
    store.database.close()
    return {"identity": account.identity_keys, "session": session.id,
            "group": inbound.id}


def load(directory: Path, key: str) -> dict[str, object]:
    store = PolicyStore(USER, DEVICE, str(directory), key, STORE_NAME)
    try:
        account = store.load_account()
        assert account is not None
        sessions = [s.id for sessions in store.load_sessions().values() for s in sessions]
        groups = [s.id for s in store.load_inbound_group_sessions()]
    finally:
        store.database.close()
    return {"identity": account.identity_keys, "session": sessions[0], "group": groups[0]}


def opens_with(directory: Path, key: str) -> bool:
    try:
        load(directory, key)
    except Exception:
        return False
    return True


def test_nio_default_key_is_what_older_newsbot_used() -> None:
    assert nio.AsyncClientConfig().pickle_key == NIO_DEFAULT_PICKLE_KEY


def test_migration_keeps_the_identity_and_every_session(tmp_path: Path) -> None:
    crypto = tmp_path / "crypto"
    before = make_old_store(crypto)
    key = prepare_pickle_key(crypto)
    assert key != NIO_DEFAULT_PICKLE_KEY and len(key) >= 32
    key_file = crypto / PICKLE_KEY_FILE
    assert key_file.read_text() == key and mode(key_file) == 0o600
    assert load(crypto, key) == before
    assert not opens_with(crypto, NIO_DEFAULT_PICKLE_KEY)
    assert not (crypto / (PICKLE_KEY_FILE + ".new")).exists()
    # Later starts read the key; nothing is migrated again.
    assert prepare_pickle_key(crypto) == key
    assert load(crypto, key) == before


def test_a_fresh_store_gets_a_random_key(tmp_path: Path) -> None:
    crypto = tmp_path / "crypto"
    crypto.mkdir()
    first = prepare_pickle_key(crypto)
    other = tmp_path / "other"
    other.mkdir()
    assert first != prepare_pickle_key(other)
    assert mode(crypto / PICKLE_KEY_FILE) == 0o600


def test_a_crash_while_re_encrypting_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crypto = tmp_path / "crypto"
    before = make_old_store(crypto)

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("power cut")

    # The account and the Olm session are re-encrypted, then the Megolm session fails.
    monkeypatch.setattr(InboundGroupSession, "from_pickle", crash)
    with pytest.raises(CryptoStoreError, match="nothing was changed"):
        prepare_pickle_key(crypto)
    monkeypatch.undo()
    assert load(crypto, NIO_DEFAULT_PICKLE_KEY) == before
    assert not (crypto / PICKLE_KEY_FILE).exists()
    key = prepare_pickle_key(crypto)
    assert load(crypto, key) == before


def test_a_crash_after_the_commit_is_finished_at_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crypto = tmp_path / "crypto"
    before = make_old_store(crypto)

    def crash(pending: Path, key_path: Path) -> None:
        raise RuntimeError("killed before the rename")

    monkeypatch.setattr(matrix_crypto, "_finish_key", crash)
    with pytest.raises(RuntimeError):
        prepare_pickle_key(crypto)
    monkeypatch.undo()
    pending = crypto / (PICKLE_KEY_FILE + ".new")
    assert pending.exists() and not (crypto / PICKLE_KEY_FILE).exists()
    assert mode(pending) == 0o600
    key = prepare_pickle_key(crypto)
    assert key == pending.with_name(PICKLE_KEY_FILE).read_text()
    assert load(crypto, key) == before


def test_a_crash_before_the_commit_leaves_a_new_key_that_is_discarded(
        tmp_path: Path) -> None:
    crypto = tmp_path / "crypto"
    before = make_old_store(crypto)
    # pickle.key.new written, the store not yet re-encrypted.
    (crypto / (PICKLE_KEY_FILE + ".new")).write_text("a-key-never-used-for-the-store")
    key = prepare_pickle_key(crypto)
    assert key != "a-key-never-used-for-the-store"
    assert load(crypto, key) == before


def test_a_store_whose_key_file_was_lost_refuses_to_start(tmp_path: Path) -> None:
    crypto = tmp_path / "crypto"
    before = make_old_store(crypto)
    key = prepare_pickle_key(crypto)
    (crypto / PICKLE_KEY_FILE).unlink()
    with pytest.raises(CryptoStoreError, match="restore pickle.key"):
        prepare_pickle_key(crypto)
    assert load(crypto, key) == before         # the store was not touched
    assert not (crypto / PICKLE_KEY_FILE).exists()
