// JavaScript Room API: a small, dependency-free client for the homeserver.
//
// One ES module for browsers and Node 20+ (it needs only `fetch` and
// `AbortController`). Served by the homeserver at
// /_homeserver/static/room-api.js; typings in room-api.d.ts beside it.
//
//   import { RoomApi } from "/_homeserver/static/room-api.js";
//   const api = await RoomApi.login("https://chat.example", "alice", "secret");
//   const roomId = await api.createRoom({ name: "Team", invite: ["@bob:chat.example"] });
//   api.addListener("message", (events) => { ... });
//   api.start();
//
// Every operation returns a Promise and, when its last argument is a
// function, also calls it node-style: callback(err, result). Failures are
// RoomApiError objects carrying `errcode`, `httpStatus` and the server's
// message. See docs/js-room-api.md for every function with an example.

const CS = "/_matrix/client/v3";
const EXT = "/_homeserver/client/v1";
const HISTORY_PAGE = 100;
const EVENT_NAMES = ["new", "update", "members", "message", "history", "error", "sync"];

/** An error from the server (Matrix `errcode`) or from the client itself. */
export class RoomApiError extends Error {
  constructor(message, errcode = "M_UNKNOWN", httpStatus = 0, data = undefined) {
    super(message);
    this.name = "RoomApiError";
    this.errcode = errcode;
    this.httpStatus = httpStatus;
    this.data = data;
  }
}

// ------------------------------------------------------------ small helpers

const enc = encodeURIComponent;

function trimBase(url) {
  if (typeof url !== "string" || url === "") {
    throw new RoomApiError("baseUrl must be a non-empty string", "M_INVALID_PARAM");
  }
  return url.replace(/\/+$/, "");
}

function requireString(name, value) {
  if (typeof value !== "string" || value === "") {
    throw new RoomApiError(`${name} must be a non-empty string`, "M_INVALID_PARAM");
  }
}

function requireRoomId(roomId) {
  requireString("roomId", roomId);
  if (!roomId.startsWith("!")) {
    throw new RoomApiError(`not a room id: ${roomId}`, "M_INVALID_PARAM");
  }
}

function requireUserId(userId) {
  requireString("userId", userId);
  if (!userId.startsWith("@") || !userId.includes(":")) {
    throw new RoomApiError(`not a user id: ${userId}`, "M_INVALID_PARAM");
  }
}

/** Split an arguments list into [positional..., callback]; the callback is
 * the last argument when it is a function, so optional arguments before it
 * may be left out: revoke(roomId, userId, cb) is revoke(roomId, userId, undefined, cb). */
function splitArgs(args, count) {
  const list = Array.from(args);
  let callback;
  if (list.length > 0 && typeof list[list.length - 1] === "function") {
    callback = list.pop();
  }
  while (list.length < count) list.push(undefined);
  return [...list.slice(0, count), callback];
}

/** Run `work` (an async function); settle the Promise and the callback. */
function settle(callback, work) {
  let promise;
  try {
    promise = Promise.resolve(work());
  } catch (err) {
    promise = Promise.reject(err);
  }
  promise = promise.catch((err) => {
    throw toRoomApiError(err);
  });
  if (typeof callback === "function") {
    promise.then(
      (result) => callback(null, result),
      (err) => callback(err),
    );
    // The caller chose the callback: an unobserved rejection is theirs to
    // handle there, so keep it from also surfacing as "unhandled".
    promise.catch(() => {});
  }
  return promise;
}

function toRoomApiError(err) {
  if (err instanceof RoomApiError) return err;
  if (err && err.name === "AbortError") return new RoomApiError("request aborted", "M_ABORTED");
  const message = err && err.message ? err.message : String(err);
  return new RoomApiError(message, "M_CONNECTION_FAILED");
}

let txnCounter = 0;
function txnId() {
  txnCounter += 1;
  return `rapi${Date.now().toString(36)}.${Math.random().toString(36).slice(2, 10)}.${txnCounter}`;
}

async function request(baseUrl, method, path, { body, token, query, signal, fetchImpl } = {}) {
  let url = baseUrl + path;
  if (query) {
    const qs = [];
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null) continue;
      for (const item of Array.isArray(v) ? v : [v]) qs.push(`${enc(k)}=${enc(String(item))}`);
    }
    if (qs.length) url += (url.includes("?") ? "&" : "?") + qs.join("&");
  }
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const doFetch = fetchImpl || globalThis.fetch;
  if (typeof doFetch !== "function") {
    throw new RoomApiError("no fetch() available (Node 20+ or a browser is needed)", "M_UNSUPPORTED");
  }
  const res = await doFetch(url, init);
  const text = await res.text();
  let data = {};
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text };
    }
  }
  if (!res.ok) {
    const err = new RoomApiError(
      (data && data.error) || `HTTP ${res.status} from ${method} ${path}`,
      (data && data.errcode) || "M_UNKNOWN",
      res.status,
      data,
    );
    throw err;
  }
  return data;
}

/** The summary of a room carried by the `new` and `update` events. */
function summaryOf(room) {
  return {
    roomId: room.roomId,
    membership: room.membership,
    name: room.name,
    topic: room.topic,
    canonicalAlias: room.canonicalAlias,
    avatarUrl: room.avatarUrl,
    inviter: room.inviter,
    isDirect: room.isDirect,
  };
}

/** Apply one state event to the room record; true when the summary changed. */
function applyState(room, ev, myUserId) {
  const c = ev.content || {};
  switch (ev.type) {
    case "m.room.name":
      if (room.name === c.name) return false;
      room.name = typeof c.name === "string" && c.name !== "" ? c.name : undefined;
      return true;
    case "m.room.topic":
      if (room.topic === c.topic) return false;
      room.topic = typeof c.topic === "string" && c.topic !== "" ? c.topic : undefined;
      return true;
    case "m.room.canonical_alias":
      if (room.canonicalAlias === c.alias) return false;
      room.canonicalAlias = c.alias || undefined;
      return true;
    case "m.room.avatar":
      if (room.avatarUrl === c.url) return false;
      room.avatarUrl = c.url || undefined;
      return true;
    case "m.room.member":
      if (ev.state_key === myUserId && c.membership === "invite") {
        room.inviter = ev.sender;
        if (c.is_direct) room.isDirect = true;
      }
      return false;
    default:
      return false;
  }
}

function memberOf(ev) {
  const c = ev.content || {};
  return {
    userId: ev.state_key,
    membership: c.membership,
    displayName: c.displayname,
    avatarUrl: c.avatar_url,
    sender: ev.sender,
    eventId: ev.event_id,
  };
}

// ------------------------------------------------------------ the client

export class RoomApi {
  /**
   * @param {string} baseUrl the homeserver, e.g. "https://chat.example"
   * @param {string} accessToken a Matrix access token
   * @param {{userId?: string, deviceId?: string, fetch?: Function}} [opts]
   */
  constructor(baseUrl, accessToken, opts = {}) {
    this.baseUrl = trimBase(baseUrl);
    requireString("accessToken", accessToken);
    this.accessToken = accessToken;
    this.userId = opts.userId;
    this.deviceId = opts.deviceId;
    this._fetch = opts.fetch;
    this._listeners = new Map(EVENT_NAMES.map((n) => [n, new Set()]));
    this._rooms = new Map(); // roomId -> {roomId, membership, name, ..., prevBatch}
    this._history = new Map(); // roomId -> {from, done}
    this._sync = null; // {controller, timeout, filter, first} while start()ed
    this._since = undefined; // next_batch of the last sync processed
  }

  // ---------------------------------------------------- sign in / sign up

  /** Log in with a user name (or full user id) and password; resolves to a RoomApi. */
  static login(baseUrl, user, password, opts, callback) {
    [opts, callback] = splitArgs(Array.from(arguments).slice(3), 1);
    return settle(callback, async () => {
      const base = trimBase(baseUrl);
      requireString("user", user);
      requireString("password", password);
      const o = opts || {};
      const body = {
        type: "m.login.password",
        identifier: { type: "m.id.user", user },
        password,
      };
      if (o.deviceId) body.device_id = o.deviceId;
      if (o.deviceName) body.initial_device_display_name = o.deviceName;
      const out = await request(base, "POST", `${CS}/login`, { body, fetchImpl: o.fetch });
      return new RoomApi(base, out.access_token, {
        userId: out.user_id,
        deviceId: out.device_id,
        fetch: o.fetch,
      });
    });
  }

  /** Create an account (dummy user-interactive auth) and log it in; resolves to a RoomApi. */
  static register(baseUrl, user, password, opts, callback) {
    [opts, callback] = splitArgs(Array.from(arguments).slice(3), 1);
    return settle(callback, async () => {
      const base = trimBase(baseUrl);
      requireString("user", user);
      requireString("password", password);
      const o = opts || {};
      const body = { username: user, password };
      if (o.deviceId) body.device_id = o.deviceId;
      if (o.deviceName) body.initial_device_display_name = o.deviceName;
      let out;
      try {
        // The only user-interactive auth stage offered is m.login.dummy:
        // answer it at once.
        out = await request(base, "POST", `${CS}/register`, {
          body: { ...body, auth: { type: "m.login.dummy" } },
          fetchImpl: o.fetch,
        });
      } catch (err) {
        // A server that wants the stage within its own session answers 401
        // with a session id: complete the stage in that session.
        if (!(err instanceof RoomApiError) || err.httpStatus !== 401 || !err.data) throw err;
        if (!err.data.session) throw err;
        out = await request(base, "POST", `${CS}/register`, {
          body: { ...body, auth: { type: "m.login.dummy", session: err.data.session } },
          fetchImpl: o.fetch,
        });
      }
      const api = new RoomApi(base, out.access_token, {
        userId: out.user_id,
        deviceId: out.device_id,
        fetch: o.fetch,
      });
      if (o.displayName) {
        await api._call("PUT", `${CS}/profile/${enc(api.userId)}/displayname`, {
          displayname: o.displayName,
        });
      }
      return api;
    });
  }

  /** Who this token belongs to; fills in `userId`. */
  whoami(callback) {
    return settle(callback, async () => {
      const out = await this._call("GET", `${CS}/account/whoami`);
      this.userId = out.user_id;
      this.deviceId = out.device_id || this.deviceId;
      return out.user_id;
    });
  }

  /** End this session on the server (the access token stops working). */
  logout(callback) {
    return settle(callback, async () => {
      this.stop();
      await this._call("POST", `${CS}/logout`, {});
      return undefined;
    });
  }

  _call(method, path, body, extra = {}) {
    return request(this.baseUrl, method, path, {
      body,
      token: this.accessToken,
      fetchImpl: this._fetch,
      ...extra,
    });
  }

  async _me() {
    if (!this.userId) await this.whoami();
    return this.userId;
  }

  // ---------------------------------------------------- rooms (the seed)

  /** createRoom(options, callback): every Client-Server createRoom option
   * (name, topic, preset, visibility, invite, room_alias_name,
   * creation_content, initial_state, is_direct, power_level_content_override,
   * room_version, ...). Resolves to the new room's id. */
  createRoom(options, callback) {
    [options, callback] = splitArgs(arguments, 1);
    return settle(callback, async () => {
      if (options !== undefined && (options === null || typeof options !== "object")) {
        throw new RoomApiError("options must be an object", "M_INVALID_PARAM");
      }
      const out = await this._call("POST", `${CS}/createRoom`, options || {});
      return out.room_id;
    });
  }

  /** findDMRoomByUserId(userId, callback): resolves to the array of ids of the
   * direct-message rooms shared with that user (empty when none). */
  findDMRoomByUserId(userId, callback) {
    [userId, callback] = splitArgs(arguments, 1);
    return settle(callback, async () => {
      requireUserId(userId);
      const out = await this._call("GET", `${EXT}/dm/${enc(userId)}`);
      return Array.isArray(out.rooms) ? out.rooms : [];
    });
  }

  /** joinRoom(roomIdOrAlias, opts, callback): opts {viaServers?, reason?}.
   * Resolves to the joined room's id. */
  joinRoom(roomIdOrAlias, opts, callback) {
    [roomIdOrAlias, opts, callback] = splitArgs(arguments, 2);
    return settle(callback, async () => {
      requireString("roomIdOrAlias", roomIdOrAlias);
      if (!/^[!#]/.test(roomIdOrAlias)) {
        throw new RoomApiError(`not a room id or alias: ${roomIdOrAlias}`, "M_INVALID_PARAM");
      }
      const o = opts || {};
      const body = {};
      if (o.reason !== undefined) body.reason = o.reason;
      const via = o.viaServers || o.via;
      const out = await this._call("POST", `${CS}/join/${enc(roomIdOrAlias)}`, body, {
        query: via && via.length ? { via, server_name: via } : undefined,
      });
      return out.room_id;
    });
  }

  /** leave(roomId, callback): leave a room, or decline an invite. */
  leave(roomId, callback) {
    [roomId, callback] = splitArgs(arguments, 1);
    return settle(callback, async () => {
      requireRoomId(roomId);
      await this._call("POST", `${CS}/rooms/${enc(roomId)}/leave`, {});
      return undefined;
    });
  }

  /** invite(roomId, userId, callback) */
  invite(roomId, userId, callback) {
    [roomId, userId, callback] = splitArgs(arguments, 2);
    return settle(callback, async () => {
      requireRoomId(roomId);
      requireUserId(userId);
      await this._call("POST", `${CS}/rooms/${enc(roomId)}/invite`, { user_id: userId });
      return undefined;
    });
  }

  /** revoke(roomId, userId, reason, callback): withdraw a pending invite.
   * Refuses (M_BAD_STATE) when the user already joined, or holds any
   * membership other than "invite"; M_FORBIDDEN when never invited. */
  revoke(roomId, userId, reason, callback) {
    [roomId, userId, reason, callback] = splitArgs(arguments, 3);
    return settle(callback, async () => {
      requireRoomId(roomId);
      requireUserId(userId);
      // The server checks the invite under the room's lock, so a join that
      // races the revoke wins and the revoke is refused.
      const body = { user_id: userId };
      if (reason !== undefined && reason !== null) body.reason = reason;
      await this._call("POST", `${EXT}/rooms/${enc(roomId)}/revoke`, body);
      return undefined;
    });
  }

  /** kick(roomId, userId, reason, callback) */
  kick(roomId, userId, reason, callback) {
    [roomId, userId, reason, callback] = splitArgs(arguments, 3);
    return this._moderate("kick", roomId, userId, reason, callback);
  }

  /** ban(roomId, userId, reason, callback) */
  ban(roomId, userId, reason, callback) {
    [roomId, userId, reason, callback] = splitArgs(arguments, 3);
    return this._moderate("ban", roomId, userId, reason, callback);
  }

  /** unban(roomId, userId, reason, callback) */
  unban(roomId, userId, reason, callback) {
    [roomId, userId, reason, callback] = splitArgs(arguments, 3);
    return this._moderate("unban", roomId, userId, reason, callback);
  }

  _moderate(action, roomId, userId, reason, callback) {
    return settle(callback, async () => {
      requireRoomId(roomId);
      requireUserId(userId);
      const body = { user_id: userId };
      if (reason !== undefined && reason !== null) body.reason = reason;
      await this._call("POST", `${CS}/rooms/${enc(roomId)}/${action}`, body);
      return undefined;
    });
  }

  /** setNickName(roomId, userId, membershipValue, nickName, callback): sets
   * the member's display name in this room only, by writing its
   * m.room.member state event ({membership: membershipValue, displayname:
   * nickName}, other fields such as avatar_url kept). Resolves to the event id. */
  setNickName(roomId, userId, membershipValue, nickName, callback) {
    [roomId, userId, membershipValue, nickName, callback] = splitArgs(arguments, 4);
    return settle(callback, async () => {
      requireRoomId(roomId);
      requireUserId(userId);
      requireString("membershipValue", membershipValue);
      if (typeof nickName !== "string") {
        throw new RoomApiError("nickName must be a string", "M_INVALID_PARAM");
      }
      const path = `${CS}/rooms/${enc(roomId)}/state/m.room.member/${enc(userId)}`;
      let content = {};
      try {
        content = await this._call("GET", path);
      } catch (err) {
        if (!(err instanceof RoomApiError) || err.errcode !== "M_NOT_FOUND") throw err;
      }
      const next = { ...content, membership: membershipValue, displayname: nickName };
      delete next.reason;
      if (membershipValue !== "invite") delete next.is_direct;
      const out = await this._call("PUT", path, next);
      return out.event_id;
    });
  }

  /** setRoomName(roomId, name, callback): resolves to the m.room.name event id. */
  setRoomName(roomId, name, callback) {
    [roomId, name, callback] = splitArgs(arguments, 2);
    return settle(callback, async () => {
      requireRoomId(roomId);
      if (typeof name !== "string") {
        throw new RoomApiError("name must be a string", "M_INVALID_PARAM");
      }
      const out = await this._call("PUT", `${CS}/rooms/${enc(roomId)}/state/m.room.name`, {
        name,
      });
      return out.event_id;
    });
  }

  /** deleteRoom(roomId, callback): the room's owner deletes it (members are
   * removed, the room is blocked). An optional second argument
   * {reason?, purge?} is accepted: deleteRoom(roomId, {purge: true}, cb). */
  deleteRoom(roomId, opts, callback) {
    [roomId, opts, callback] = splitArgs(arguments, 2);
    return settle(callback, async () => {
      requireRoomId(roomId);
      const o = opts || {};
      const body = {};
      if (o.reason !== undefined) body.reason = o.reason;
      if (o.purge !== undefined) body.purge = Boolean(o.purge);
      const out = await this._call("POST", `${EXT}/rooms/${enc(roomId)}/delete`, body);
      this._rooms.delete(roomId);
      this._history.delete(roomId);
      return out;
    });
  }

  // ---------------------------------------------------- messages

  /** sendMessage(roomId, message, callback): message is a string (sent as
   * m.text) or a full m.room.message content object. Resolves to the event id. */
  sendMessage(roomId, message, callback) {
    [roomId, message, callback] = splitArgs(arguments, 2);
    return settle(callback, async () => {
      requireRoomId(roomId);
      let content = message;
      if (typeof message === "string") content = { msgtype: "m.text", body: message };
      if (!content || typeof content !== "object" || typeof content.body !== "string") {
        throw new RoomApiError(
          "message must be a string or an object with a string body",
          "M_INVALID_PARAM",
        );
      }
      const out = await this._call(
        "PUT",
        `${CS}/rooms/${enc(roomId)}/send/m.room.message/${enc(txnId())}`,
        content,
      );
      return out.event_id;
    });
  }

  /** getHistory(roomId, {limit, reset}, callback): older messages, `limit`
   * (default 100) at a time; each call goes further back. Resolves to
   * {roomId, events, hasMore} with events oldest first, and emits `history`
   * with the same object. When live events run, history starts just before
   * the first timeline the live events delivered for that room. */
  getHistory(roomId, opts, callback) {
    [roomId, opts, callback] = splitArgs(arguments, 2);
    return settle(callback, async () => {
      requireRoomId(roomId);
      const o = opts || {};
      const limit = o.limit === undefined ? HISTORY_PAGE : Number(o.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
        throw new RoomApiError("limit must be an integer from 1 to 1000", "M_INVALID_PARAM");
      }
      if (o.reset) this._history.delete(roomId);
      let cursor = this._history.get(roomId);
      if (!cursor) {
        const room = this._rooms.get(roomId);
        cursor = { from: room ? room.prevBatch : undefined, done: false };
        this._history.set(roomId, cursor);
      }
      let events = [];
      if (!cursor.done) {
        const out = await this._call("GET", `${CS}/rooms/${enc(roomId)}/messages`, undefined, {
          query: { dir: "b", limit, from: cursor.from },
        });
        const chunk = Array.isArray(out.chunk) ? out.chunk : [];
        events = chunk.map((ev) => ({ ...ev, room_id: roomId })).reverse();
        // No `end`, or an empty page, means the start of the room was reached.
        if (!out.end || chunk.length === 0) cursor.done = true;
        else cursor.from = out.end;
      }
      const result = { roomId, events, hasMore: !cursor.done };
      this._emit("history", result);
      return result;
    });
  }

  /** setSeen(roomId, eventId, callback): moves the read marker and sends a
   * read receipt for that event. */
  setSeen(roomId, eventId, callback) {
    [roomId, eventId, callback] = splitArgs(arguments, 2);
    return settle(callback, async () => {
      requireRoomId(roomId);
      requireString("eventId", eventId);
      await this._call("POST", `${CS}/rooms/${enc(roomId)}/read_markers`, {
        "m.fully_read": eventId,
        "m.read": eventId,
      });
      return undefined;
    });
  }

  /** getMembers(roomId, callback): resolves to [{userId, membership,
   * displayName, avatarUrl}] for everyone with a membership in the room. */
  getMembers(roomId, callback) {
    [roomId, callback] = splitArgs(arguments, 1);
    return settle(callback, async () => {
      requireRoomId(roomId);
      const out = await this._call("GET", `${CS}/rooms/${enc(roomId)}/members`);
      return (out.chunk || []).map((ev) => {
        const m = memberOf(ev);
        return {
          userId: m.userId,
          membership: m.membership,
          displayName: m.displayName,
          avatarUrl: m.avatarUrl,
        };
      });
    });
  }

  // ---------------------------------------------------- live events

  /** addListener(event, listener): event is one of "new", "update",
   * "members", "message", "history" (and "error", "sync"). */
  addListener(event, listener) {
    const set = this._listeners.get(event);
    if (!set) throw new RoomApiError(`unknown event ${event}`, "M_INVALID_PARAM");
    if (typeof listener !== "function") {
      throw new RoomApiError("listener must be a function", "M_INVALID_PARAM");
    }
    set.add(listener);
    return this;
  }

  /** removeListener(event, listener) */
  removeListener(event, listener) {
    const set = this._listeners.get(event);
    if (set) set.delete(listener);
    return this;
  }

  _emit(event, ...args) {
    for (const fn of Array.from(this._listeners.get(event) || [])) {
      try {
        fn(...args);
      } catch (err) {
        if (event !== "error") this._emit("error", toRoomApiError(err));
        else console.error(err); // eslint-disable-line no-console
      }
    }
  }

  /** Whether start() is running. */
  get running() {
    return this._sync !== null;
  }

  /** start(opts, callback): begin the /sync loop. Resolves (and calls back)
   * once the first sync was processed, i.e. after the `new` events for every
   * room the user is in or invited to. After a stop(), start() resumes where
   * the last sync ended: what happened meanwhile arrives, nothing twice.
   * opts {timeout (ms, long-poll, default 30000), timelineLimit (default 20)}. */
  start(opts, callback) {
    [opts, callback] = splitArgs(arguments, 1);
    return settle(callback, async () => {
      if (this._sync) return this._sync.first;
      const o = opts || {};
      const state = {
        controller: new AbortController(),
        timeout: o.timeout === undefined ? 30000 : o.timeout,
        filter: JSON.stringify({
          room: { timeline: { limit: o.timelineLimit === undefined ? 20 : o.timelineLimit } },
        }),
        first: undefined,
      };
      let resolveFirst;
      let rejectFirst;
      state.first = new Promise((res, rej) => {
        resolveFirst = res;
        rejectFirst = rej;
      });
      state.first.catch(() => {});
      this._sync = state;
      try {
        await this._me();
      } catch (err) {
        if (this._sync === state) this._sync = null;
        rejectFirst(toRoomApiError(err));
        return state.first;
      }
      this._loop(state, resolveFirst, rejectFirst);
      return state.first;
    });
  }

  /** stop(): end the /sync loop (an in-flight long poll is aborted). */
  stop() {
    const state = this._sync;
    if (!state) return;
    this._sync = null;
    state.controller.abort();
  }

  async _loop(state, resolveFirst, rejectFirst) {
    let backoff = 500;
    let first = true;
    while (this._sync === state) {
      try {
        const out = await this._call("GET", `${CS}/sync`, undefined, {
          query: {
            since: this._since,
            timeout: first ? 0 : state.timeout,
            filter: state.filter,
          },
          signal: state.controller.signal,
        });
        if (this._sync !== state) break;
        this._process(out, this._since === undefined);
        this._since = out.next_batch;
        backoff = 500;
        if (first) {
          first = false;
          resolveFirst(undefined);
        }
        this._emit("sync", { nextBatch: out.next_batch });
      } catch (err) {
        if (this._sync !== state) break;
        const e = toRoomApiError(err);
        if (first && (e.httpStatus === 401 || e.httpStatus === 403 || e.httpStatus === 404)) {
          // A bad token or a server without /sync: no point in retrying.
          this._sync = null;
          rejectFirst(e);
          this._emit("error", e);
          break;
        }
        this._emit("error", e);
        if (e.errcode === "M_UNKNOWN_TOKEN") {
          this._sync = null;
          break;
        }
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 30000);
      }
    }
    if (first) rejectFirst(new RoomApiError("stopped before the first sync", "M_ABORTED"));
  }

  _room(roomId) {
    let room = this._rooms.get(roomId);
    if (!room) {
      room = { roomId, membership: undefined, prevBatch: undefined };
      this._rooms.set(roomId, room);
    }
    return room;
  }

  _process(out, initial) {
    const me = this.userId;
    const rooms = out.rooms || {};
    const messages = [];
    // Invites: stripped state only.
    for (const [roomId, data] of Object.entries(rooms.invite || {})) {
      const known = this._rooms.has(roomId);
      const room = this._room(roomId);
      const before = room.membership;
      room.membership = "invite";
      for (const ev of (data.invite_state && data.invite_state.events) || []) {
        applyState(room, ev, me);
      }
      if (!known || before === "leave" || before === "ban" || before === undefined) {
        this._emit("new", summaryOf(room));
      } else if (before !== "invite") {
        this._emit("update", summaryOf(room));
      }
    }
    // Joined rooms: state before the timeline, then the timeline.
    for (const [roomId, data] of Object.entries(rooms.join || {})) {
      const known = this._rooms.has(roomId) && this._rooms.get(roomId).membership !== "leave";
      const room = this._room(roomId);
      const before = room.membership;
      let changed = false;
      const memberChanges = [];
      for (const ev of (data.state && data.state.events) || []) {
        changed = applyState(room, ev, me) || changed;
        if (ev.type === "m.room.member" && known) memberChanges.push(memberOf(ev));
      }
      const timeline = data.timeline || {};
      if (room.prevBatch === undefined && timeline.prev_batch) room.prevBatch = timeline.prev_batch;
      for (const ev of timeline.events || []) {
        if (ev.state_key !== undefined) {
          changed = applyState(room, ev, me) || changed;
          if (ev.type === "m.room.member") memberChanges.push(memberOf(ev));
        } else {
          messages.push({ ...ev, room_id: roomId });
        }
      }
      room.membership = "join";
      if (!known) {
        this._emit("new", summaryOf(room));
      } else if (before !== "join" || changed) {
        this._emit("update", summaryOf(room));
      }
      if (memberChanges.length && !initial) {
        this._emit("members", { roomId, members: memberChanges });
      }
    }
    // Left, kicked, banned, or the room was deleted.
    for (const [roomId, data] of Object.entries(rooms.leave || {})) {
      const room = this._room(roomId);
      const before = room.membership;
      let membership = "leave";
      const memberChanges = [];
      const events = [
        ...((data.state && data.state.events) || []),
        ...((data.timeline && data.timeline.events) || []),
      ];
      for (const ev of events) {
        if (ev.state_key !== undefined) {
          applyState(room, ev, me);
          if (ev.type === "m.room.member") {
            memberChanges.push(memberOf(ev));
            if (ev.state_key === me) membership = (ev.content || {}).membership || "leave";
          }
        } else if (before === "join") {
          messages.push({ ...ev, room_id: roomId });
        }
      }
      room.membership = membership;
      if (before !== undefined && before !== "leave" && before !== "ban") {
        this._emit("update", summaryOf(room));
        if (memberChanges.length) this._emit("members", { roomId, members: memberChanges });
      }
      this._history.delete(roomId);
    }
    if (messages.length) this._emit("message", messages, { initial });
  }
}

/** createClient(baseUrl, accessToken, opts): the same as `new RoomApi(...)`. */
export function createClient(baseUrl, accessToken, opts) {
  return new RoomApi(baseUrl, accessToken, opts);
}

/** login(baseUrl, user, password, opts?, callback?): resolves to a RoomApi. */
export function login(baseUrl, user, password, ...rest) {
  return RoomApi.login(baseUrl, user, password, ...rest);
}

/** register(baseUrl, user, password, opts?, callback?): resolves to a RoomApi. */
export function register(baseUrl, user, password, ...rest) {
  return RoomApi.register(baseUrl, user, password, ...rest);
}

export default RoomApi;
