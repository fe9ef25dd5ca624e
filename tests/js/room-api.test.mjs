// The JavaScript Room API against a live homeserver: every function, its
// success and its refusal paths, through Promises and node-style callbacks.
//
//   node --test tests/js/
//
// Comments "NEEDS SERVER: ..." name the endpoint a test depends on beyond
// the rooms API (those landed later); without it the test fails, never skips.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { RoomApi, RoomApiError, createClient, login, register } from "../../homeserver/web/room-api.js";
import { startServer, uniqueName, waitFor, webFile } from "./harness.mjs";

let server;
let base;

before(async () => {
  server = await startServer();
  base = server.baseUrl;
});

after(async () => {
  if (server) await server.stop();
});

// ------------------------------------------------------------------ helpers

async function newUser(prefix = "u", opts) {
  return RoomApi.register(base, uniqueName(prefix), "pw-" + prefix, opts);
}

/** Call fn(callback) and resolve with [err, result] from the callback; also
 * checks the callback runs exactly once. */
function viaCallback(fn) {
  return new Promise((resolve, reject) => {
    let calls = 0;
    const ret = fn((err, result) => {
      calls += 1;
      if (calls > 1) reject(new Error("callback called twice"));
      setTimeout(() => resolve([err, result, ret]), 20);
    });
    if (!(ret instanceof Promise)) reject(new Error("no Promise returned with a callback"));
  });
}

async function rejects(promise, errcode, httpStatus) {
  const err = await promise.then(
    (v) => assert.fail(`expected ${errcode}, resolved with ${JSON.stringify(v)}`),
    (e) => e,
  );
  assert.ok(err instanceof RoomApiError, `not a RoomApiError: ${err}`);
  assert.equal(err.name, "RoomApiError");
  assert.equal(err.errcode, errcode, `errcode (message: ${err.message})`);
  if (httpStatus !== undefined) assert.equal(err.httpStatus, httpStatus, "httpStatus");
  assert.equal(typeof err.message, "string");
  assert.ok(err.message.length > 0);
  return err;
}

async function membershipOf(api, roomId, userId) {
  const members = await api.getMembers(roomId);
  const m = members.find((x) => x.userId === userId);
  return m ? m.membership : undefined;
}

async function raw(api, method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${api.accessToken}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const CS = "/_matrix/client/v3";

// ------------------------------------------------------------------ tests

describe("sign in", () => {
  test("register resolves to a client that knows its user id", async () => {
    const name = uniqueName("reg");
    const api = await register(base, name, "secret-1");
    assert.ok(api instanceof RoomApi);
    assert.match(api.userId, new RegExp(`^@${name}:`));
    assert.equal(typeof api.accessToken, "string");
    assert.equal(await api.whoami(), api.userId);
  });

  test("register through a callback, with a display name", async () => {
    const name = uniqueName("regcb");
    const [err, api] = await viaCallback((cb) =>
      RoomApi.register(base, name, "secret-2", { displayName: "Reggie" }, cb),
    );
    assert.equal(err, null);
    assert.ok(api instanceof RoomApi);
    const profile = await raw(api, "GET", `${CS}/profile/${encodeURIComponent(api.userId)}`);
    assert.equal(profile.body.displayname, "Reggie");
  });

  test("register refuses a taken user name", async () => {
    const name = uniqueName("taken");
    await register(base, name, "pw");
    await rejects(register(base, name, "pw"), "M_USER_IN_USE", 400);
  });

  test("login with the password, and refusal with a wrong one (Promise and callback)", async () => {
    const name = uniqueName("login");
    const first = await register(base, name, "right");
    const api = await login(base, name, "right");
    assert.equal(api.userId, first.userId);
    assert.notEqual(api.accessToken, first.accessToken);
    await rejects(RoomApi.login(base, name, "wrong"), "M_FORBIDDEN", 403);
    const [err, result] = await viaCallback((cb) => RoomApi.login(base, name, "wrong", cb));
    assert.ok(err instanceof RoomApiError);
    assert.equal(err.errcode, "M_FORBIDDEN");
    assert.equal(result, undefined);
  });

  test("createClient from a base URL and an access token", async () => {
    const made = await newUser("tok");
    const api = createClient(base + "/", made.accessToken);
    assert.equal(api.baseUrl, base);
    assert.equal(await api.whoami(), made.userId);
    const bad = createClient(base, "not-a-token");
    await rejects(bad.whoami(), "M_UNKNOWN_TOKEN", 401);
  });

  test("a bad base URL is refused before any request", () => {
    assert.throws(() => new RoomApi("", "t"), RoomApiError);
    assert.throws(() => new RoomApi(base, ""), RoomApiError);
  });

  test("network failure is a RoomApiError too", async () => {
    const api = createClient("http://127.0.0.1:1", "t");
    const err = await rejects(api.createRoom({}), "M_CONNECTION_FAILED", 0);
    assert.ok(err.message);
  });

  test("logout ends the session", async () => {
    const api = await newUser("out");
    await api.logout();
    await rejects(api.whoami(), "M_UNKNOWN_TOKEN", 401);
  });
});

describe("createRoom", () => {
  test("all options; resolves to the room id", async () => {
    const alice = await newUser("cra");
    const bob = await newUser("crb");
    const alias = uniqueName("alias");
    const roomId = await alice.createRoom({
      name: "All options",
      topic: "Everything set",
      preset: "public_chat",
      visibility: "public",
      room_alias_name: alias,
      invite: [bob.userId],
      creation_content: { "m.federate": false },
      initial_state: [
        { type: "m.room.guest_access", state_key: "", content: { guest_access: "can_join" } },
        { type: "org.example.custom", content: { hello: "world" } },
      ],
      power_level_content_override: { events_default: 0, invite: 0 },
    });
    assert.match(roomId, /^!/);
    const state = (await raw(alice, "GET", `${CS}/rooms/${encodeURIComponent(roomId)}/state`)).body;
    const get = (type, key = "") => state.find((e) => e.type === type && e.state_key === key);
    assert.equal(get("m.room.name").content.name, "All options");
    assert.equal(get("m.room.topic").content.topic, "Everything set");
    assert.equal(get("m.room.join_rules").content.join_rule, "public");
    assert.equal(get("m.room.create").content["m.federate"], false);
    assert.equal(get("m.room.guest_access").content.guest_access, "can_join");
    assert.equal(get("org.example.custom").content.hello, "world");
    assert.equal(get("m.room.power_levels").content.invite, 0);
    assert.equal(get("m.room.member", bob.userId).content.membership, "invite");
    const fullAlias = `#${alias}:${alice.userId.split(":").slice(1).join(":")}`;
    assert.equal(get("m.room.canonical_alias").content.alias, fullAlias);
    // public visibility: in the published room list
    const list = (await raw(alice, "GET", `${CS}/publicRooms?limit=500`)).body;
    assert.ok(list.chunk.some((r) => r.room_id === roomId), "room is in /publicRooms");
    // the alias resolves: bob joins by it
    assert.equal(await bob.joinRoom(fullAlias), roomId);
  });

  test("no options at all, and the callback form", async () => {
    const alice = await newUser("crn");
    const roomId = await alice.createRoom();
    assert.match(roomId, /^!/);
    const [err, id2, promise] = await viaCallback((cb) => alice.createRoom({ name: "cb" }, cb));
    assert.equal(err, null);
    assert.match(id2, /^!/);
    assert.equal(await promise, id2, "the Promise resolves to the same id");
  });

  test("the server overwrites creator: the caller in v10, dropped from v11 on", async () => {
    // Seed: "The server will overwrite the following keys: creator, room_version".
    const alice = await newUser("crc");
    const mallory = `@mallory:${alice.userId.split(":").slice(1).join(":")}`;
    for (const version of ["10", "11", "12"]) {
      const roomId = await alice.createRoom({
        room_version: version,
        creation_content: { creator: mallory, room_version: "1", "m.federate": true },
      });
      const path = `${CS}/rooms/${encodeURIComponent(roomId)}/state/m.room.create/`;
      const create = (await raw(alice, "GET", path)).body;
      assert.equal(create.room_version, version);
      assert.equal(create["m.federate"], true, "other keys are kept");
      if (version === "10") assert.equal(create.creator, alice.userId);
      else assert.ok(!("creator" in create), `v${version} keeps no creator: ${JSON.stringify(create)}`);
    }
  });

  test("refusals: bad preset, taken alias, bad options", async () => {
    const alice = await newUser("crr");
    const err = await alice.createRoom({ preset: "no_such_preset" }).catch((e) => e);
    assert.ok(err instanceof RoomApiError);
    assert.equal(err.httpStatus, 400);
    const alias = uniqueName("dup");
    await alice.createRoom({ room_alias_name: alias });
    await rejects(alice.createRoom({ room_alias_name: alias }), "M_ROOM_IN_USE", 400);
    const [cbErr] = await viaCallback((cb) => alice.createRoom("not an object", cb));
    assert.equal(cbErr.errcode, "M_INVALID_PARAM");
  });
});

describe("findDMRoomByUserId", () => {
  test("resolves to the DM rooms shared with a user, empty when none", async () => {
    const alice = await newUser("dma");
    const bob = await newUser("dmb");
    const carol = await newUser("dmc");
    assert.deepEqual(await alice.findDMRoomByUserId(bob.userId), []);
    const dm = await alice.createRoom({
      is_direct: true,
      preset: "trusted_private_chat",
      invite: [bob.userId],
    });
    const found = await alice.findDMRoomByUserId(bob.userId);
    assert.ok(Array.isArray(found));
    assert.deepEqual(found, [dm]);
    await bob.joinRoom(dm);
    assert.deepEqual(await bob.findDMRoomByUserId(alice.userId), [dm], "from the invitee's side");
    assert.deepEqual(await alice.findDMRoomByUserId(carol.userId), []);
    const [err, viaCb] = await viaCallback((cb) => alice.findDMRoomByUserId(bob.userId, cb));
    assert.equal(err, null);
    assert.deepEqual(viaCb, [dm]);
  });

  test("refuses a malformed user id", async () => {
    const alice = await newUser("dmx");
    await rejects(alice.findDMRoomByUserId("bob"), "M_INVALID_PARAM");
  });
});

describe("joinRoom / leave / invite", () => {
  test("join by id after an invite; leave; callbacks", async () => {
    const alice = await newUser("ja");
    const bob = await newUser("jb");
    const roomId = await alice.createRoom({ name: "J" });
    await alice.invite(roomId, bob.userId);
    assert.equal(await membershipOf(alice, roomId, bob.userId), "invite");
    const [err, joined] = await viaCallback((cb) => bob.joinRoom(roomId, cb));
    assert.equal(err, null);
    assert.equal(joined, roomId);
    assert.equal(await membershipOf(alice, roomId, bob.userId), "join");
    const [lerr, lres] = await viaCallback((cb) => bob.leave(roomId, cb));
    assert.equal(lerr, null);
    assert.equal(lres, undefined);
    assert.equal(await membershipOf(alice, roomId, bob.userId), "leave");
  });

  test("join a public room by alias with opts", async () => {
    const alice = await newUser("jpa");
    const bob = await newUser("jpb");
    const alias = uniqueName("pub");
    const roomId = await alice.createRoom({ preset: "public_chat", room_alias_name: alias });
    const server = alice.userId.split(":").slice(1).join(":");
    assert.equal(await bob.joinRoom(`#${alias}:${server}`, { reason: "hi" }), roomId);
    assert.equal(await membershipOf(alice, roomId, bob.userId), "join");
  });

  test("refusals: private room without invite, unknown alias, bad id", async () => {
    const alice = await newUser("jra");
    const bob = await newUser("jrb");
    const roomId = await alice.createRoom({ preset: "private_chat" });
    await rejects(bob.joinRoom(roomId), "M_FORBIDDEN", 403);
    const server = alice.userId.split(":").slice(1).join(":");
    await rejects(bob.joinRoom(`#${uniqueName("none")}:${server}`), "M_NOT_FOUND", 404);
    await rejects(bob.joinRoom("not-a-room"), "M_INVALID_PARAM");
    const [err] = await viaCallback((cb) => bob.joinRoom(roomId, {}, cb));
    assert.equal(err.errcode, "M_FORBIDDEN");
  });

  test("leave refusals: a room one is not in", async () => {
    const alice = await newUser("lra");
    const bob = await newUser("lrb");
    const roomId = await alice.createRoom({});
    const err = await bob.leave(roomId).catch((e) => e);
    assert.ok(err instanceof RoomApiError);
    assert.ok(err.httpStatus === 403 || err.httpStatus === 404, `status ${err.httpStatus}`);
    await rejects(bob.leave("nope"), "M_INVALID_PARAM");
  });

  test("invite refusals: not a member, no power, malformed user", async () => {
    const alice = await newUser("ira");
    const bob = await newUser("irb");
    const carol = await newUser("irc");
    const roomId = await alice.createRoom({
      preset: "public_chat",
      power_level_content_override: { invite: 50 },
    });
    await rejects(bob.invite(roomId, carol.userId), "M_FORBIDDEN", 403);
    await bob.joinRoom(roomId);
    await rejects(bob.invite(roomId, carol.userId), "M_FORBIDDEN", 403);
    await rejects(alice.invite(roomId, "carol"), "M_INVALID_PARAM");
    const [err, res] = await viaCallback((cb) => alice.invite(roomId, carol.userId, cb));
    assert.equal(err, null);
    assert.equal(res, undefined);
    assert.equal(await membershipOf(alice, roomId, carol.userId), "invite");
  });
});

describe("revoke", () => {
  test("withdraws a pending invite", async () => {
    const alice = await newUser("rva");
    const bob = await newUser("rvb");
    const roomId = await alice.createRoom({ invite: [bob.userId] });
    assert.equal(await membershipOf(alice, roomId, bob.userId), "invite");
    await alice.revoke(roomId, bob.userId, "changed my mind");
    assert.equal(await membershipOf(alice, roomId, bob.userId), "leave");
    await rejects(bob.joinRoom(roomId), "M_FORBIDDEN", 403);
  });

  test("callback form, reason left out", async () => {
    const alice = await newUser("rvca");
    const bob = await newUser("rvcb");
    const roomId = await alice.createRoom({ invite: [bob.userId] });
    const [err, res] = await viaCallback((cb) => alice.revoke(roomId, bob.userId, cb));
    assert.equal(err, null);
    assert.equal(res, undefined);
    assert.equal(await membershipOf(alice, roomId, bob.userId), "leave");
  });

  test("refuses when the user already joined (and leaves them in)", async () => {
    const alice = await newUser("rvja");
    const bob = await newUser("rvjb");
    const roomId = await alice.createRoom({ invite: [bob.userId] });
    await bob.joinRoom(roomId);
    await rejects(alice.revoke(roomId, bob.userId, "too late"), "M_BAD_STATE", 403);
    const [err] = await viaCallback((cb) => alice.revoke(roomId, bob.userId, "too late", cb));
    assert.equal(err.errcode, "M_BAD_STATE");
    assert.equal(await membershipOf(alice, roomId, bob.userId), "join");
  });

  test("refuses a user never invited, and one without power", async () => {
    const alice = await newUser("rvna");
    const bob = await newUser("rvnb");
    const carol = await newUser("rvnc");
    const roomId = await alice.createRoom({ preset: "public_chat", invite: [carol.userId] });
    await rejects(alice.revoke(roomId, bob.userId), "M_FORBIDDEN", 403);
    await bob.joinRoom(roomId);
    await rejects(bob.revoke(roomId, carol.userId), "M_FORBIDDEN", 403);
    assert.equal(await membershipOf(alice, roomId, carol.userId), "invite");
  });
});

describe("kick / ban / unban", () => {
  test("kick without power rejects with M_FORBIDDEN; with power removes the member", async () => {
    const alice = await newUser("ka");
    const bob = await newUser("kb");
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.joinRoom(roomId);
    await rejects(bob.kick(roomId, alice.userId, "coup"), "M_FORBIDDEN", 403);
    const [cbErr] = await viaCallback((cb) => bob.kick(roomId, alice.userId, "coup", cb));
    assert.ok(cbErr instanceof RoomApiError);
    assert.equal(cbErr.errcode, "M_FORBIDDEN");
    assert.equal(cbErr.httpStatus, 403);
    const [err, res] = await viaCallback((cb) => alice.kick(roomId, bob.userId, "bye", cb));
    assert.equal(err, null);
    assert.equal(res, undefined);
    assert.equal(await membershipOf(alice, roomId, bob.userId), "leave");
    // a kicked user may come back to a public room
    assert.equal(await bob.joinRoom(roomId), roomId);
  });

  test("kick of someone not in the room is refused", async () => {
    const alice = await newUser("kna");
    const bob = await newUser("knb");
    const roomId = await alice.createRoom({});
    await rejects(alice.kick(roomId, bob.userId), "M_FORBIDDEN", 403);
  });

  test("ban keeps the user out until unban", async () => {
    const alice = await newUser("ba");
    const bob = await newUser("bb");
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.joinRoom(roomId);
    await rejects(bob.ban(roomId, alice.userId, "no"), "M_FORBIDDEN", 403);
    await alice.ban(roomId, bob.userId, "spam");
    assert.equal(await membershipOf(alice, roomId, bob.userId), "ban");
    await rejects(bob.joinRoom(roomId), "M_FORBIDDEN", 403);
    await rejects(bob.unban(roomId, bob.userId), "M_FORBIDDEN", 403);
    const [err] = await viaCallback((cb) => alice.unban(roomId, bob.userId, cb));
    assert.equal(err, null);
    assert.equal(await membershipOf(alice, roomId, bob.userId), "leave");
    assert.equal(await bob.joinRoom(roomId), roomId);
    await rejects(alice.unban(roomId, bob.userId), "M_BAD_STATE", 403);
    const [berr] = await viaCallback((cb) => alice.ban(roomId, bob.userId, cb));
    assert.equal(berr, null);
    assert.equal(await membershipOf(alice, roomId, bob.userId), "ban");
  });
});

describe("setNickName / setRoomName", () => {
  test("setNickName sets the member's display name in that room only", async () => {
    const alice = await newUser("na", { displayName: "Alice" });
    const roomA = await alice.createRoom({});
    const roomB = await alice.createRoom({});
    const eventId = await alice.setNickName(roomA, alice.userId, "join", "Ally");
    assert.match(eventId, /^\$/);
    const members = await alice.getMembers(roomA);
    assert.equal(members.find((m) => m.userId === alice.userId).displayName, "Ally");
    const other = await alice.getMembers(roomB);
    assert.equal(other.find((m) => m.userId === alice.userId).displayName, "Alice");
    const [err, id2] = await viaCallback((cb) =>
      alice.setNickName(roomA, alice.userId, "join", "Al", cb),
    );
    assert.equal(err, null);
    assert.match(id2, /^\$/);
    assert.equal(await membershipOf(alice, roomA, alice.userId), "join");
  });

  test("setNickName of another member is refused", async () => {
    const alice = await newUser("nra");
    const bob = await newUser("nrb");
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.joinRoom(roomId);
    await rejects(bob.setNickName(roomId, alice.userId, "join", "Mallory"), "M_FORBIDDEN", 403);
    await rejects(alice.setNickName(roomId, alice.userId, "join", 42), "M_INVALID_PARAM");
  });

  test("setRoomName resolves to the event id; refused without power", async () => {
    const alice = await newUser("rna");
    const bob = await newUser("rnb");
    const roomId = await alice.createRoom({ name: "Before", preset: "public_chat" });
    const eventId = await alice.setRoomName(roomId, "After");
    assert.match(eventId, /^\$/);
    const ev = await raw(alice, "GET", `${CS}/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`);
    assert.equal(ev.body.type, "m.room.name");
    assert.equal(ev.body.content.name, "After");
    const name = await raw(alice, "GET", `${CS}/rooms/${encodeURIComponent(roomId)}/state/m.room.name`);
    assert.equal(name.body.name, "After");
    await bob.joinRoom(roomId);
    await rejects(bob.setRoomName(roomId, "Mine"), "M_FORBIDDEN", 403);
    const [err, id2] = await viaCallback((cb) => alice.setRoomName(roomId, "Again", cb));
    assert.equal(err, null);
    assert.match(id2, /^\$/);
  });
});

describe("deleteRoom", () => {
  test("the owner deletes; members are removed and the room is blocked", async () => {
    const alice = await newUser("dra");
    const bob = await newUser("drb");
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.joinRoom(roomId);
    await rejects(bob.deleteRoom(roomId), "M_FORBIDDEN", 403);
    const out = await alice.deleteRoom(roomId);
    assert.ok(out && typeof out === "object");
    assert.ok(out.kicked_users.includes(bob.userId));
    const joined = (await raw(bob, "GET", `${CS}/joined_rooms`)).body.joined_rooms;
    assert.ok(!joined.includes(roomId));
    const err = await bob.joinRoom(roomId).catch((e) => e);
    assert.ok(err instanceof RoomApiError, "joining a deleted room is refused");
  });

  test("callback form with options", async () => {
    const alice = await newUser("drc");
    const roomId = await alice.createRoom({});
    await alice.sendMessage(roomId, "soon gone");
    const [err, out] = await viaCallback((cb) =>
      alice.deleteRoom(roomId, { reason: "done", purge: true }, cb),
    );
    assert.equal(err, null);
    assert.ok(out.purged_events > 0, JSON.stringify(out));
  });
});

describe("messages", () => {
  test("sendMessage: a string or a content object; refusal for non-members", async () => {
    const alice = await newUser("ma");
    const bob = await newUser("mb");
    const roomId = await alice.createRoom({});
    const e1 = await alice.sendMessage(roomId, "hello");
    const [err, e2] = await viaCallback((cb) =>
      alice.sendMessage(roomId, { msgtype: "m.notice", body: "notice" }, cb),
    );
    assert.equal(err, null);
    assert.match(e1, /^\$/);
    assert.match(e2, /^\$/);
    const page = await alice.getHistory(roomId, { limit: 2 });
    assert.deepEqual(
      page.events.map((e) => [e.event_id, e.content.msgtype, e.content.body]),
      [
        [e1, "m.text", "hello"],
        [e2, "m.notice", "notice"],
      ],
    );
    await rejects(bob.sendMessage(roomId, "intruder"), "M_FORBIDDEN", 403);
    await rejects(alice.sendMessage(roomId, { msgtype: "m.text" }), "M_INVALID_PARAM");
  });

  test("getHistory: 100 at a time, progressively older, to the start", async () => {
    const alice = await newUser("ha");
    const roomId = await alice.createRoom({});
    const total = 230;
    for (let i = 0; i < total; i++) await alice.sendMessage(roomId, `m${i}`);
    const seen = [];
    alice.addListener("history", (page) => seen.push(page));
    const bodies = (page) =>
      page.events.filter((e) => e.type === "m.room.message").map((e) => e.content.body);
    const p1 = await alice.getHistory(roomId);
    assert.equal(p1.events.length, 100);
    assert.equal(p1.hasMore, true);
    assert.deepEqual(bodies(p1), Array.from({ length: 100 }, (_, i) => `m${130 + i}`));
    const [err, p2] = await viaCallback((cb) => alice.getHistory(roomId, {}, cb));
    assert.equal(err, null);
    assert.deepEqual(bodies(p2), Array.from({ length: 100 }, (_, i) => `m${30 + i}`));
    const p3 = await alice.getHistory(roomId, { limit: 100 });
    assert.deepEqual(bodies(p3), Array.from({ length: 30 }, (_, i) => `m${i}`));
    assert.ok(p3.events.some((e) => e.type === "m.room.create"), "reaches the room's start");
    let last = p3;
    for (let i = 0; i < 3 && last.hasMore; i++) last = await alice.getHistory(roomId);
    assert.equal(last.hasMore, false);
    const done = await alice.getHistory(roomId);
    assert.deepEqual(done.events, []);
    assert.equal(done.hasMore, false);
    assert.ok(seen.length >= 4, "a history event per call");
    assert.equal(seen[0], p1);
    for (const page of [p1, p2, p3]) {
      for (const e of page.events) assert.equal(e.room_id, roomId);
    }
    const again = await alice.getHistory(roomId, { limit: 5, reset: true });
    assert.deepEqual(bodies(again), ["m225", "m226", "m227", "m228", "m229"]);
  });

  test("getHistory refusals: non-member, bad limit", async () => {
    const alice = await newUser("hra");
    const bob = await newUser("hrb");
    const roomId = await alice.createRoom({});
    await rejects(bob.getHistory(roomId), "M_FORBIDDEN", 403);
    await rejects(alice.getHistory(roomId, { limit: 0 }), "M_INVALID_PARAM");
  });

  // NEEDS SERVER: POST /_matrix/client/v3/rooms/{roomId}/read_markers
  test("setSeen moves the read marker and the read receipt", async () => {
    const alice = await newUser("sa");
    const bob = await newUser("sb");
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.joinRoom(roomId);
    const eventId = await alice.sendMessage(roomId, "read me");
    await bob.setSeen(roomId, eventId);
    const marker = await raw(
      bob,
      "GET",
      `${CS}/user/${encodeURIComponent(bob.userId)}/rooms/${encodeURIComponent(roomId)}/account_data/m.fully_read`,
    );
    assert.equal(marker.status, 200, JSON.stringify(marker.body));
    assert.equal(marker.body.event_id, eventId);
    const [err] = await viaCallback((cb) => bob.setSeen(roomId, eventId, cb));
    assert.equal(err, null);
    const outsider = await newUser("sc");
    const refusal = await outsider.setSeen(roomId, eventId).catch((e) => e);
    assert.ok(refusal instanceof RoomApiError);
    assert.ok(refusal.httpStatus >= 400);
    await rejects(bob.setSeen(roomId, ""), "M_INVALID_PARAM");
  });

  test("getMembers lists memberships; refused to outsiders of a private room", async () => {
    const alice = await newUser("gma", { displayName: "Alice G" });
    const bob = await newUser("gmb");
    const carol = await newUser("gmc");
    const roomId = await alice.createRoom({ invite: [bob.userId] });
    const members = await alice.getMembers(roomId);
    const byId = Object.fromEntries(members.map((m) => [m.userId, m]));
    assert.equal(byId[alice.userId].membership, "join");
    assert.equal(byId[alice.userId].displayName, "Alice G");
    assert.equal(byId[bob.userId].membership, "invite");
    const [err, viaCb] = await viaCallback((cb) => alice.getMembers(roomId, cb));
    assert.equal(err, null);
    assert.equal(viaCb.length, members.length);
    await rejects(carol.getMembers(roomId), "M_FORBIDDEN", 403);
  });
});

// NEEDS SERVER: GET /_matrix/client/v3/sync (standard shape)
describe("live events", () => {
  test("new, update, members, message (batched) and stop", async () => {
    const alice = await newUser("lva");
    const bob = await newUser("lvb");
    const got = { alice: [], bob: [] };
    const record = (who, api) => {
      for (const name of ["new", "update", "members", "message"]) {
        api.addListener(name, (payload, info) => got[who].push({ name, payload, info }));
      }
    };
    record("alice", alice);
    record("bob", bob);
    const errors = [];
    alice.addListener("error", (e) => errors.push(e));
    bob.addListener("error", (e) => errors.push(e));

    // a room that exists before start() shows up as `new` in the first sync
    const early = await alice.createRoom({ name: "Early" });
    await alice.start({ timeout: 2000 });
    const [err] = await viaCallback((cb) => bob.start({ timeout: 2000 }, cb));
    assert.equal(err, null);
    assert.ok(alice.running && bob.running);
    assert.ok(got.alice.some((e) => e.name === "new" && e.payload.roomId === early && e.payload.name === "Early"));

    const find = (who, pred) => got[who].find(pred);
    const roomId = await alice.createRoom({ name: "Live" });
    await waitFor(() => find("alice", (e) => e.name === "new" && e.payload.roomId === roomId), "alice: new");
    await alice.invite(roomId, bob.userId);
    const invited = await waitFor(
      () => find("bob", (e) => e.name === "new" && e.payload.roomId === roomId),
      "bob: new (invite)",
    );
    assert.equal(invited.payload.membership, "invite");
    assert.equal(invited.payload.inviter, alice.userId);
    assert.equal(invited.payload.name, "Live");

    await bob.joinRoom(roomId);
    await waitFor(
      () => find("bob", (e) => e.name === "update" && e.payload.roomId === roomId && e.payload.membership === "join"),
      "bob: update (joined)",
    );
    const joinedEvt = await waitFor(
      () =>
        find("alice", (e) =>
          e.name === "members" && e.payload.roomId === roomId &&
          e.payload.members.some((m) => m.userId === bob.userId && m.membership === "join")),
      "alice: members (bob joined)",
    );
    assert.ok(joinedEvt);

    // stop() then start() resumes: what was sent meanwhile arrives as one
    // batch, in order, and nothing already delivered comes again
    bob.stop();
    await alice.sendMessage(roomId, "one");
    await alice.sendMessage(roomId, "two");
    await bob.start({ timeout: 2000 });
    const batch = await waitFor(
      () => find("bob", (e) => e.name === "message" && e.payload.some((m) => m.content.body === "two")),
      "bob: message batch",
    );
    const bodies = batch.payload.filter((m) => m.room_id === roomId).map((m) => m.content.body);
    assert.deepEqual(bodies, ["one", "two"], "both messages in one batch, nothing twice");
    assert.equal(batch.info.initial, false);

    // a live message while both are running
    const count = got.bob.length;
    await alice.sendMessage(roomId, "live!");
    await waitFor(
      () => got.bob.slice(count).find((e) => e.name === "message" && e.payload.some((m) => m.content.body === "live!")),
      "bob: live message",
    );

    await alice.setRoomName(roomId, "Renamed");
    await waitFor(
      () => find("bob", (e) => e.name === "update" && e.payload.roomId === roomId && e.payload.name === "Renamed"),
      "bob: update (name)",
    );

    // getHistory after live events continues before the first timeline seen
    const page = await bob.getHistory(roomId, { limit: 100 });
    assert.ok(page.events.every((e) => e.room_id === roomId));

    await alice.kick(roomId, bob.userId, "bye");
    await waitFor(
      () => find("bob", (e) => e.name === "update" && e.payload.roomId === roomId && e.payload.membership === "leave"),
      "bob: update (kicked)",
    );

    // removeListener: no more events to a removed listener
    let extra = 0;
    const fn = () => { extra += 1; };
    alice.addListener("message", fn);
    alice.removeListener("message", fn);
    await alice.sendMessage(roomId, "after removal");
    await waitFor(
      () => find("alice", (e) => e.name === "message" && e.payload.some((m) => m.content.body === "after removal")),
      "alice: own message",
    );
    assert.equal(extra, 0);

    alice.stop();
    bob.stop();
    assert.ok(!alice.running && !bob.running);
    const before = got.bob.length;
    await alice.sendMessage(roomId, "nobody listens");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(got.bob.length, before, "no events after stop()");
    assert.deepEqual(errors.map((e) => `${e.errcode}: ${e.message}`), []);
  });

  test("start with a bad token rejects", async () => {
    const bad = createClient(base, "bad-token", { userId: "@x:y" });
    await rejects(bad.start(), "M_UNKNOWN_TOKEN", 401);
    assert.equal(bad.running, false);
  });

  test("unknown event names are refused", async () => {
    const api = createClient(base, "t", { userId: "@x:y" });
    assert.throws(() => api.addListener("nope", () => {}), RoomApiError);
  });
});

describe("served by the homeserver", () => {
  test("/_homeserver/static/room-api.js is the module, as JavaScript", async () => {
    const res = await fetch(`${base}/_homeserver/static/room-api.js`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type"), /^application\/javascript/);
    const text = await res.text();
    assert.equal(text, webFile("room-api.js").toString());
    // the served bytes work as a module
    const mod = await import("data:text/javascript;base64," + Buffer.from(text).toString("base64"));
    const api = await mod.RoomApi.register(base, uniqueName("srv"), "pw");
    assert.match(await api.createRoom({}), /^!/);
  });

  test("the typings and the demo page", async () => {
    const dts = await fetch(`${base}/_homeserver/static/room-api.d.ts`);
    assert.equal(dts.status, 200);
    assert.equal(await dts.text(), webFile("room-api.d.ts").toString());
    const page = await fetch(`${base}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type"), /^text\/html/);
    assert.match(await page.text(), /room-api\.js/);
  });

  test("unknown files and traversal are 404 Matrix errors", async () => {
    for (const path of ["/_homeserver/static/nope.js", "/_homeserver/static/..%2Fapp.py", "/_homeserver/static/.hidden"]) {
      const res = await fetch(base + path);
      assert.equal(res.status, 404, path);
      const body = await res.json();
      assert.ok(body.errcode, path);
    }
  });
});
