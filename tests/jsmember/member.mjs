// A Matrix room member on Element's own crypto stack (matrix-js-sdk + its Rust crypto), for tests.
//
// Protocol: one JSON object per line on stdin, {"cmd": "<name>", ...args, "id"?: any}; each is
// answered by exactly one JSON line on stdout (the "id" echoed when given), or
// {"error": "...", ...} on failure. Commands run one at a time, in order. stdout carries nothing
// else: every console method is redirected to stderr (and the SDK's chatty levels dropped unless
// JSMEMBER_DEBUG is set), because the SDK and the Rust tracing layer both log through console.*.
//
// Commands (see tests/jsmember.py for the Python side):
//   login {homeserver, user_id, password}      -> {user_id, device_id}
//   exclude_insecure {on}                       -> {on}
//   bootstrap_cross_signing {}                  -> {master_key, self_signing_key, device_signed}
//   create_room {encrypted, invite?, name?}     -> {room_id}
//   join {room}                                 -> {room_id}
//   send {room, body, wait_joined?, timeout?}   -> {event_id}
//   messages {room, sender?, min_count?, timeout?, recheck?} -> {events: [...], pending: [...]}
//   device_status {user_id, device_id, timeout?} -> {known, signed_by_owner, cross_signing_verified,
//                                                    locally_verified}
//   stop {}                                     -> {stopped: true}, then the process exits 0

import readline from "node:readline";
import util from "node:util";

const DEBUG = Boolean(process.env.JSMEMBER_DEBUG);
const toStderr = (...args) => process.stderr.write(util.format(...args) + "\n");
const quiet = () => {};
console.log = DEBUG ? toStderr : quiet;
console.info = DEBUG ? toStderr : quiet;
console.debug = DEBUG ? toStderr : quiet;
console.trace = DEBUG ? toStderr : quiet;
console.warn = toStderr;
console.error = toStderr;

// Imported after the console is redirected: the SDK binds nothing at load time, but this keeps
// stdout clean whatever a future version does on import.
const sdk = await import("matrix-js-sdk");
const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");

const {
    AllDevicesIsolationMode,
    OnlySignedDevicesIsolationMode,
    EventShieldColour,
    EventShieldReason,
    DecryptionFailureCode,
} = cryptoApi;

// Failures that a key arriving later can still cure: not a verdict yet.
const WAITING_FOR_KEYS = new Set([
    DecryptionFailureCode.MEGOLM_UNKNOWN_INBOUND_SESSION_ID,
    DecryptionFailureCode.OLM_UNKNOWN_MESSAGE_INDEX,
    DecryptionFailureCode.HISTORICAL_MESSAGE_NO_KEY_BACKUP,
    DecryptionFailureCode.HISTORICAL_MESSAGE_BACKUP_UNCONFIGURED,
    DecryptionFailureCode.HISTORICAL_MESSAGE_WORKING_BACKUP,
]);
// Refusals based on what this client knew of the sender's device when the event arrived. js-sdk
// never retries them by itself (a running Element keeps showing them as undecryptable; a reload
// re-judges them against the device keys known by then): `recheck: true` does what a reload does.
const TRUST_REFUSALS = new Set([
    DecryptionFailureCode.UNSIGNED_SENDER_DEVICE,
    DecryptionFailureCode.UNKNOWN_SENDER_DEVICE,
    DecryptionFailureCode.SENDER_IDENTITY_PREVIOUSLY_VERIFIED,
]);

let client = null;
let password = null;
const rechecked = new Set();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class CommandError extends Error {
    constructor(message, extra = {}) {
        super(message);
        this.extra = extra;
    }
}

async function waitFor(what, timeoutS, predicate, intervalMs = 200) {
    const deadline = Date.now() + timeoutS * 1000;
    for (;;) {
        const value = await predicate();
        if (value) return value;
        if (Date.now() > deadline) throw new CommandError(`timed out after ${timeoutS} s waiting for ${what}`);
        await sleep(intervalMs);
    }
}

function needClient() {
    if (!client) throw new CommandError("not logged in: send login first");
    return client;
}

function crypto() {
    const crypto = needClient().getCrypto();
    if (!crypto) throw new CommandError("crypto is not initialised");
    return crypto;
}

async function keysQuery(userId) {
    return needClient().http.authedRequest(sdk.Method.Post, "/keys/query", undefined, {
        device_keys: { [userId]: [] },
    });
}

async function resolveRoom(room) {
    const c = needClient();
    if (typeof room !== "string" || !room) throw new CommandError("room must be a room id or alias");
    if (room.startsWith("#")) return (await c.getRoomIdForAlias(room)).room_id;
    return room;
}

async function joinedRoom(roomId, timeoutS) {
    const c = needClient();
    return waitFor(`${roomId} to be joined in this client's sync`, timeoutS, () => {
        const room = c.getRoom(roomId);
        return room && room.getMyMembership() === "join" ? room : null;
    });
}

async function waitEncryptionKnown(roomId, timeoutS) {
    // Until the client has seen m.room.encryption in its sync, it would not encrypt.
    const room = needClient().getRoom(roomId);
    if (!room || !room.hasEncryptionStateEvent()) return;
    await waitFor(`encryption to be enabled in ${roomId}`, timeoutS,
        () => crypto().isEncryptionEnabledInRoom(roomId));
}

const commands = {
    async login({ homeserver, user_id, password: pw }) {
        if (client) throw new CommandError("already logged in");
        const anonymous = sdk.createClient({ baseUrl: homeserver });
        const session = await anonymous.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: user_id },
            password: pw,
            initial_device_display_name: "jsmember (matrix-js-sdk)",
        });
        password = pw;
        client = sdk.createClient({
            baseUrl: homeserver,
            userId: session.user_id,
            deviceId: session.device_id,
            accessToken: session.access_token,
        });
        // No IndexedDB in Node: the Rust crypto store lives in memory for this process only.
        await client.initRustCrypto({ useIndexedDB: false });
        await client.startClient({ initialSyncLimit: 50 });
        await waitFor("the first sync", 60,
            () => ["PREPARED", "SYNCING"].includes(client.getSyncState()));
        // Others can only encrypt to us once our device keys are on the server.
        await waitFor("this device's keys on the server", 60, async () => {
            const answer = await keysQuery(session.user_id);
            return answer.device_keys?.[session.user_id]?.[session.device_id];
        });
        return { user_id: session.user_id, device_id: session.device_id };
    },

    async exclude_insecure({ on }) {
        // Element's "exclude insecure devices": receiving side, events from devices not signed by
        // their owner fail with UNSIGNED_SENDER_DEVICE; sending side, keys go to signed devices only.
        crypto().setDeviceIsolationMode(on ? new OnlySignedDevicesIsolationMode()
            : new AllDevicesIsolationMode(false));
        return { on: Boolean(on) };
    },

    async bootstrap_cross_signing() {
        const c = needClient();
        const userId = c.getSafeUserId();
        await crypto().bootstrapCrossSigning({
            authUploadDeviceSigningKeys: async (makeRequest) => {
                try {
                    return await makeRequest(null);
                } catch (e) {
                    if (e?.httpStatus !== 401 || !e.data?.flows) throw e;
                    return makeRequest({
                        type: "m.login.password",
                        identifier: { type: "m.id.user", user: userId },
                        password,
                        session: e.data.session,
                    });
                }
            },
        });
        // Done only when the server shows our device signed by the new self-signing key.
        return waitFor("the device's cross-signing signature on the server", 60, async () => {
            const answer = await keysQuery(userId);
            const master = Object.values(answer.master_keys?.[userId]?.keys ?? {})[0];
            const ssk = Object.values(answer.self_signing_keys?.[userId]?.keys ?? {})[0];
            const sigs = answer.device_keys?.[userId]?.[c.getDeviceId()]?.signatures?.[userId] ?? {};
            if (!master || !ssk || !(`ed25519:${ssk}` in sigs)) return null;
            return { master_key: master, self_signing_key: ssk, device_signed: true };
        });
    },

    async create_room({ encrypted = true, invite = [], name, timeout = 30 }) {
        const initialState = encrypted ? [{
            type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" },
        }] : [];
        const options = { preset: "private_chat", invite, initial_state: initialState };
        if (name) options.name = name;
        const { room_id } = await needClient().createRoom(options);
        await joinedRoom(room_id, timeout);
        if (encrypted) {
            await waitFor(`encryption to be enabled in ${room_id}`, timeout,
                () => crypto().isEncryptionEnabledInRoom(room_id));
        }
        return { room_id };
    },

    async join({ room, timeout = 30 }) {
        const joined = await needClient().joinRoom(room);
        await joinedRoom(joined.roomId, timeout);
        await waitEncryptionKnown(joined.roomId, timeout);
        return { room_id: joined.roomId };
    },

    async send({ room, body, wait_joined = [], timeout = 30 }) {
        const roomId = await resolveRoom(room);
        const r = await joinedRoom(roomId, timeout);
        // The keys go to the members this client knows of when it sends: wait for the expected ones.
        await waitFor(`${wait_joined.join(", ")} to be joined in ${roomId}`, timeout,
            () => wait_joined.every((u) => r.getMember(u)?.membership === "join"));
        await waitEncryptionKnown(roomId, timeout);
        const { event_id } = await needClient().sendMessage(roomId, { msgtype: "m.text", body });
        return { event_id };
    },

    async messages({ room, sender, min_count = 1, timeout = 60, recheck = false }) {
        const c = needClient();
        const roomId = await resolveRoom(room);
        const deadline = Date.now() + timeout * 1000;
        let last = { events: [], pending: [] };
        for (;;) {
            const r = c.getRoom(roomId);
            if (r) {
                last = await collect(r, sender, recheck);
                if (last.events.length >= min_count) return last;
                const timeline = r.getLiveTimeline();
                if (timeline.getPaginationToken(sdk.EventTimeline.BACKWARDS)) {
                    await c.scrollback(r, 50);
                    continue;
                }
            }
            if (Date.now() > deadline) {
                throw new CommandError(`timed out after ${timeout} s: ${last.events.length} of ${min_count}`
                    + ` messages in ${roomId}${sender ? ` from ${sender}` : ""}`, last);
            }
            await sleep(250);
        }
    },

    async device_status({ user_id, device_id, timeout = 15 }) {
        const deadline = Date.now() + timeout * 1000;
        for (;;) {
            // Waits (briefly) for a key query in flight; downloads an untracked user's keys.
            await crypto().getUserDeviceInfo([user_id], true);
            const status = await crypto().getDeviceVerificationStatus(user_id, device_id);
            if (status) {
                return {
                    known: true,
                    signed_by_owner: status.signedByOwner,
                    cross_signing_verified: status.crossSigningVerified,
                    locally_verified: status.localVerified,
                };
            }
            // The Rust store only holds devices of users we share a room with.
            if (Date.now() > deadline) {
                return { known: false, signed_by_owner: false, cross_signing_verified: false,
                    locally_verified: false };
            }
            await sleep(250);
        }
    },

    async stop() {
        if (client) {
            try {
                await client.logout(true);
            } catch (e) {
                console.warn("logout failed:", e?.message ?? e);
                client.stopClient();
            }
        }
        return { stopped: true };
    },
};

async function collect(room, sender, recheck) {
    const c = needClient();
    const backend = c.getCrypto();
    const candidates = room.getLiveTimeline().getEvents().filter((e) =>
        (e.getType() === "m.room.message" || e.isEncrypted()) && (!sender || e.getSender() === sender));
    const events = [];
    const pending = [];
    for (const e of candidates) {
        if (e.isEncrypted() && (e.isBeingDecrypted() || e.shouldAttemptDecryption())) {
            await c.decryptEventIfNeeded(e);
        }
        const reason = e.decryptionFailureReason;
        if (recheck && reason && TRUST_REFUSALS.has(reason) && !rechecked.has(e.getId())) {
            rechecked.add(e.getId());
            await backend.getUserDeviceInfo([e.getSender()], true);
            await e.attemptDecryption(backend, { isRetry: true });
        }
        if (e.getType() !== "m.room.message" && !e.isDecryptionFailure()) continue;
        const described = await describe(e);
        if (e.decryptionFailureReason && WAITING_FOR_KEYS.has(e.decryptionFailureReason)) {
            pending.push(described);
        } else {
            events.push(described);
        }
    }
    return { events, pending };
}

async function describe(e) {
    const failure = e.decryptionFailureReason ?? null;
    let shield = null;
    if (e.isEncrypted() && !failure) {
        const info = await crypto().getEncryptionInfoForEvent(e);
        if (info) {
            shield = {
                colour: EventShieldColour[info.shieldColour],
                reason: info.shieldReason === null ? null : EventShieldReason[info.shieldReason],
            };
        }
    }
    return {
        event_id: e.getId(),
        type: e.getType(),
        sender: e.getSender(),
        origin_server_ts: e.getTs(),
        encrypted: e.isEncrypted(),
        // Original content: js-sdk's getContent() would show an edit's replacement instead.
        content: failure ? null : e.getOriginalContent(),
        decryption_failure: failure,
        sender_device: await senderDevice(e),
        shield,
        // Whether `recheck` re-judged a trust refusal (the verdict above is the re-judged one).
        rechecked: rechecked.has(e.getId()),
    };
}

async function senderDevice(e) {
    if (!e.isEncrypted()) return null;
    const wire = e.getWireContent();
    if (typeof wire.device_id === "string") return wire.device_id;
    // Newer senders drop the deprecated device_id: find the device by its Curve25519 key.
    const key = e.getSenderKey() || wire.sender_key;
    if (!key) return null;
    const devices = (await crypto().getUserDeviceInfo([e.getSender()])).get(e.getSender());
    for (const [deviceId, device] of devices ?? []) {
        if (device.getIdentityKey() === key) return deviceId;
    }
    return null;
}

function reply(message) {
    process.stdout.write(JSON.stringify(message) + "\n");
}

process.on("unhandledRejection", (reason) => console.error("unhandled rejection:", reason));

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of input) {
    if (!line.trim()) continue;
    let request;
    try {
        request = JSON.parse(line);
    } catch (e) {
        reply({ error: `not JSON: ${e.message}` });
        continue;
    }
    const { cmd, id, ...args } = request;
    const echo = id === undefined ? {} : { id };
    const handler = Object.hasOwn(commands, cmd) ? commands[cmd] : null;
    if (!handler) {
        reply({ ...echo, error: `unknown command: ${cmd}` });
        continue;
    }
    try {
        reply({ ...echo, ...(await handler(args)) });
    } catch (e) {
        const extra = e instanceof CommandError ? e.extra : {};
        console.error(`${cmd} failed:`, e);
        reply({ ...echo, ...extra, error: e?.message ?? String(e), errcode: e?.errcode ?? null });
    }
    if (cmd === "stop") break;
}
client?.stopClient();
process.exit(0);
