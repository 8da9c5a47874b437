"""The Element-like test member (tests/jsmember.py) against the real Synapse, no bot involved.

These prove the harness itself: that it decrypts, that it tells a device signed by its owner
from one that is not, and that "exclude insecure devices" really makes it refuse events from
unsigned devices — tests of the bot's cross-signing rely on all three.
"""

from __future__ import annotations

from pathlib import Path

from tests.jsmember import JsMember
from tests.support import NewUserFactory, SynapseServer


async def test_js_member_decrypts_and_flags_an_unsigned_device(
        synapse: SynapseServer, new_user: NewUserFactory, tmp_path: Path) -> None:
    alice, bob = await new_user("alice"), await new_user("bob")
    async with JsMember(tmp_path, "alice") as a, JsMember(tmp_path, "bob") as b:
        a_device = await a.login(synapse.base_url, alice)
        await b.login(synapse.base_url, bob)
        room_id = await a.create_room(encrypted=True, invite=[bob.user_id])
        assert await b.join(room_id) == room_id
        event_id = await a.send(room_id, "hello from alice", wait_joined=[bob.user_id])

        [event] = await b.messages(room_id, sender=alice.user_id, min_count=1)
        assert event["event_id"] == event_id
        assert event["encrypted"] is True
        assert event["decryption_failure"] is None
        assert event["content"]["body"] == "hello from alice"
        assert event["sender_device"] == a_device
        # Alice never set up cross-signing: Element's red "not verified by its owner" shield.
        assert event["shield"] == {"colour": "RED", "reason": "UNSIGNED_DEVICE"}
        status = await b.device_status(alice.user_id, a_device)
        assert status["known"] is True
        assert status["signed_by_owner"] is False


async def test_exclude_insecure_decrypts_only_cross_signed_senders(
        synapse: SynapseServer, new_user: NewUserFactory, tmp_path: Path) -> None:
    signed, unsigned, reader = (
        await new_user("signed"), await new_user("unsigned"), await new_user("reader"))
    async with (JsMember(tmp_path, "signed") as s, JsMember(tmp_path, "unsigned") as u,
                JsMember(tmp_path, "reader") as r):
        s_device = await s.login(synapse.base_url, signed)
        u_device = await u.login(synapse.base_url, unsigned)
        await r.login(synapse.base_url, reader)
        await r.exclude_insecure(True)
        room_id = await s.create_room(encrypted=True, invite=[unsigned.user_id, reader.user_id])
        await u.join(room_id)
        await r.join(room_id)
        everyone = [signed.user_id, unsigned.user_id, reader.user_id]

        # Before its owner cross-signs it, the device's events are refused.
        before_id = await s.send(room_id, "before cross-signing", wait_joined=everyone)
        [refused] = await r.messages(room_id, sender=signed.user_id, min_count=1)
        assert refused["event_id"] == before_id
        assert refused["decryption_failure"] == "UNSIGNED_SENDER_DEVICE"
        assert refused["content"] is None
        status = await r.device_status(signed.user_id, s_device)
        assert status["known"] is True
        assert status["signed_by_owner"] is False

        # The reader sees the device become signed by its owner (not verified by the reader).
        keys = await s.bootstrap_cross_signing()
        assert keys["device_signed"] is True
        status = await r.wait_device_status(signed.user_id, s_device, signed_by_owner=True)
        assert status["cross_signing_verified"] is False
        assert (await r.device_status(unsigned.user_id, u_device))["signed_by_owner"] is False

        after_id = await s.send(room_id, "after cross-signing", wait_joined=everyone)
        await u.send(room_id, "from an unsigned device", wait_joined=everyone)

        before, after = await r.messages(room_id, sender=signed.user_id, min_count=2)
        # A running Element keeps its first verdict; the same megolm session now decrypts.
        assert before["decryption_failure"] == "UNSIGNED_SENDER_DEVICE"
        assert after["event_id"] == after_id
        assert after["decryption_failure"] is None
        assert after["content"]["body"] == "after cross-signing"
        assert after["shield"] == {"colour": "NONE", "reason": None}
        # A reload re-judges against what is known now.
        rejudged, _ = await r.messages(room_id, sender=signed.user_id, min_count=2,
                                       recheck=True)
        assert rejudged["rechecked"] is True
        assert rejudged["content"]["body"] == "before cross-signing"

        [from_unsigned] = await r.messages(room_id, sender=unsigned.user_id, min_count=1)
        assert from_unsigned["decryption_failure"] == "UNSIGNED_SENDER_DEVICE"
        assert from_unsigned["content"] is None

        # Control: the unsigned member's message is fine for anyone not excluding insecure
        # devices, so the refusal above is the setting's doing, not a missing key.
        [own] = await s.messages(room_id, sender=unsigned.user_id, min_count=1)
        assert own["decryption_failure"] is None
        assert own["shield"] == {"colour": "RED", "reason": "UNSIGNED_DEVICE"}
