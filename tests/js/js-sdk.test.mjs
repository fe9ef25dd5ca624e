// matrix-js-sdk's own sync loop (MatrixClient.startClient) against a live
// homeserver: two clients; an invite, a join, messages, a rename, a reaction,
// an edit and a thread reply all reach the other client as the SDK's own
// events and models (Room, RoomMember, relations, Thread).
//
//   node --test --test-force-exit tests/js/js-sdk.test.mjs
//
// Every HTTP call the SDK makes goes through a recording fetch: the test
// fails on any 5xx, and on a 4xx other than the few a client expects (an
// account data type never set, for instance), so an endpoint the SDK needs
// and we lack shows up by name.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

import { startServer, uniqueName, waitFor } from "./harness.mjs";

logger.setLevel(process.env.SDK_LOG_LEVEL || "warn");

let server;
const calls = [];

before(async () => {
  server = await startServer();
});

after(async () => {
  if (server) await server.stop();
});

/** fetch that records (method, path, status) of every call. */
async function recordingFetch(input, init) {
  const res = await fetch(input, init);
  const url = new URL(input instanceof URL ? input.href : typeof input === "string" ? input : input.url);
  calls.push({ method: init?.method || "GET", path: url.pathname, status: res.status });
  return res;
}

async function register(prefix) {
  const username = uniqueName(prefix);
  const res = await fetch(`${server.baseUrl}/_matrix/client/v3/register`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password: "pw-" + prefix, auth: { type: "m.login.dummy" } }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = await res.json();
  return sdk.createClient({
    baseUrl: server.baseUrl,
    userId: body.user_id,
    accessToken: body.access_token,
    deviceId: body.device_id,
    fetchFn: recordingFetch,
    timelineSupport: true,
  });
}

async function started(client, opts = {}) {
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
      if (state === sdk.SyncState.Prepared) resolve();
      if (state === sdk.SyncState.Error) reject(data?.error || new Error("sync error"));
    });
  });
  await client.startClient({ initialSyncLimit: 20, ...opts });
  await prepared;
  return client;
}

/** The next timeline event in `roomId` satisfying `pred`, as the SDK emits it. */
function nextTimelineEvent(client, roomId, pred) {
  return new Promise((resolve) => {
    const onEvent = (event, room, toStartOfTimeline) => {
      if (toStartOfTimeline || room?.roomId !== roomId || !pred(event)) return;
      client.off(sdk.RoomEvent.Timeline, onEvent);
      resolve(event);
    };
    client.on(sdk.RoomEvent.Timeline, onEvent);
  });
}

function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

test("matrix-js-sdk startClient: invite, join, messages, rename, reaction, edit, thread", { timeout: 120_000 }, async () => {
  const alice = await started(await register("alice"));
  const bob = await started(await register("bob"), { threadSupport: true });
  try {
    // The SDK loaded our push rules (it waits forever without them).
    assert.ok(alice.pushRules?.global?.override?.length > 0, "push rules loaded");

    // ---- invite: bob's client sees it as a RoomMember membership change
    const { room_id: roomId } = await alice.createRoom({ name: "Original", preset: "private_chat" });
    const invited = new Promise((resolve) => {
      bob.on(sdk.RoomMemberEvent.Membership, (event, member) => {
        if (member.roomId === roomId && member.userId === bob.getUserId() && member.membership === "invite") resolve(member);
      });
    });
    await alice.invite(roomId, bob.getUserId());
    const member = await within(invited, 20_000, "bob's invite");
    assert.equal(member.events.member.getSender(), alice.getUserId());
    assert.equal(bob.getRoom(roomId).getMyMembership(), "invite");

    // ---- join: alice's client sees bob join
    const bobJoined = new Promise((resolve) => {
      alice.on(sdk.RoomMemberEvent.Membership, (_e, m) => {
        if (m.roomId === roomId && m.userId === bob.getUserId() && m.membership === "join") resolve();
      });
    });
    await bob.joinRoom(roomId);
    await within(bobJoined, 20_000, "bob's join at alice");
    await waitFor(() => bob.getRoom(roomId)?.getMyMembership() === "join", "bob joined in his client", 20_000);
    assert.equal(bob.getRoom(roomId).name, "Original");

    // ---- messages both ways
    const hello = within(
      nextTimelineEvent(bob, roomId, (e) => e.getType() === "m.room.message" && e.getContent().body === "hello bob"),
      20_000,
      "alice's message at bob",
    );
    const { event_id: helloId } = await alice.sendTextMessage(roomId, "hello bob");
    const helloEvent = await hello;
    assert.equal(helloEvent.getId(), helloId);
    assert.equal(helloEvent.getSender(), alice.getUserId());
    const reply = within(
      nextTimelineEvent(alice, roomId, (e) => e.getType() === "m.room.message" && e.getContent().body === "hi alice"),
      20_000,
      "bob's message at alice",
    );
    await bob.sendTextMessage(roomId, "hi alice");
    await reply;

    // ---- rename: the Room model's name follows
    const renamed = new Promise((resolve) => {
      bob.on(sdk.RoomEvent.Name, (room) => {
        if (room.roomId === roomId && room.name === "Renamed") resolve();
      });
    });
    await alice.setRoomName(roomId, "Renamed");
    await within(renamed, 20_000, "the rename at bob");
    assert.equal(bob.getRoom(roomId).currentState.getStateEvents("m.room.name", "").getContent().name, "Renamed");

    // ---- reaction: aggregated by the SDK's relations container
    const reacted = within(
      nextTimelineEvent(alice, roomId, (e) => e.getType() === "m.reaction"),
      20_000,
      "bob's reaction at alice",
    );
    await bob.sendEvent(roomId, "m.reaction", {
      "m.relates_to": { rel_type: "m.annotation", event_id: helloId, key: "👍" },
    });
    const reaction = await reacted;
    assert.equal(reaction.getRelation().event_id, helloId);
    const annotations = alice
      .getRoom(roomId)
      .getUnfilteredTimelineSet()
      .relations.getChildEventsForEvent(helloId, "m.annotation", "m.reaction");
    assert.ok(annotations, "annotations aggregated");
    assert.deepEqual(
      annotations.getSortedAnnotationsByKey().map(([key, events]) => [key, events.size]),
      [["👍", 1]],
    );

    // ---- edit: bob's copy of the message shows the new content
    const edited = within(
      nextTimelineEvent(bob, roomId, (e) => e.getRelation()?.rel_type === "m.replace"),
      20_000,
      "alice's edit at bob",
    );
    await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: "* hello bob, edited",
      "m.new_content": { msgtype: "m.text", body: "hello bob, edited" },
      "m.relates_to": { rel_type: "m.replace", event_id: helloId },
    });
    const edit = await edited;
    const original = bob.getRoom(roomId).findEventById(helloId);
    await waitFor(() => original.replacingEventId() === edit.getId(), "the edit applied", 10_000);
    assert.equal(original.getContent().body, "hello bob, edited");

    // ---- thread reply: bob's client (threads on) files it under a Thread
    // of the root, which the SDK builds with /relations and /threads
    const threadReply = within(
      new Promise((resolve) => {
        const check = () => {
          const thread = bob.getRoom(roomId)?.getThread(helloId);
          const ev = thread?.events.find((e) => e.getContent().body === "in the thread");
          if (ev) resolve({ thread, ev });
        };
        bob.on(sdk.ThreadEvent.New, check);
        bob.on(sdk.ThreadEvent.Update, check);
        bob.on(sdk.RoomEvent.Timeline, check);
      }),
      20_000,
      "alice's thread reply in bob's Thread",
    );
    await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: "in the thread",
      "m.relates_to": { rel_type: "m.thread", event_id: helloId, is_falling_back: true, "m.in_reply_to": { event_id: helloId } },
    });
    const { thread, ev } = await threadReply;
    assert.equal(thread.id, helloId);
    assert.equal(ev.threadRootId, helloId);
    assert.equal(ev.isRelation("m.thread"), true);
    assert.equal(ev.getSender(), alice.getUserId());
    await waitFor(() => thread.length >= 1 && thread.rootEvent?.getId() === helloId, "the thread's root and length", 10_000);

    // ---- the counts the server gives: bob has unread notifications
    await waitFor(
      () => bob.getRoom(roomId).getUnreadNotificationCount(sdk.NotificationCountType.Total) >= 1,
      "unread notifications at bob",
      10_000,
    );
    // (let the SDK's own follow-up requests, such as thread pages, finish)
    await new Promise((r) => setTimeout(r, 500));
  } finally {
    alice.stopClient();
    bob.stopClient();
  }

  if (process.env.SDK_CALLS) console.log(JSON.stringify(calls));
  const failures = calls.filter((c) => c.status >= 500 || (c.status >= 400 && !expected4xx(c)));
  assert.deepEqual(failures, [], "unexpected error answers to the SDK");
});

/** 4xx answers a client is built to get: account data never set. */
function expected4xx(c) {
  return c.status === 404 && /\/account_data\//.test(c.path);
}
