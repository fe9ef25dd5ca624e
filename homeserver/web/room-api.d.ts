// Typings for room-api.js, the JavaScript Room API of the homeserver.
// Served beside it at /_homeserver/static/room-api.d.ts.

/** Node-style callback: called with (null, result) or (err). */
export type Callback<T> = (err: RoomApiError | null, result?: T) => void;

/** An error from the server (its Matrix errcode) or from the client itself
 * (httpStatus 0: bad argument, network failure, abort). */
export class RoomApiError extends Error {
  constructor(message: string, errcode?: string, httpStatus?: number, data?: unknown);
  readonly name: "RoomApiError";
  /** Matrix error code, e.g. "M_FORBIDDEN", "M_NOT_FOUND", "M_BAD_STATE". */
  errcode: string;
  /** HTTP status of the failed request; 0 when no request was answered. */
  httpStatus: number;
  /** The server's whole JSON error body, when there was one. */
  data?: unknown;
}

/** A Matrix client event as the server serialises it, plus its room id. */
export interface MatrixEvent {
  event_id: string;
  room_id: string;
  type: string;
  sender: string;
  origin_server_ts: number;
  content: Record<string, any>;
  state_key?: string;
  unsigned?: Record<string, any>;
}

/** A state event for createRoom's initial_state. */
export interface StateEvent {
  type: string;
  /** Defaults to "". */
  state_key?: string;
  content: Record<string, any>;
}

/** The Client-Server API createRoom options (all of them pass through). */
export interface CreateRoomOptions {
  creation_content?: Record<string, any>;
  initial_state?: StateEvent[];
  invite?: string[];
  invite_3pid?: Record<string, any>[];
  is_direct?: boolean;
  name?: string;
  power_level_content_override?: Record<string, any>;
  preset?: "private_chat" | "public_chat" | "trusted_private_chat";
  room_alias_name?: string;
  room_version?: string;
  topic?: string;
  visibility?: "public" | "private";
  [extra: string]: any;
}

export interface JoinOptions {
  /** Servers to try the join through (for rooms on other servers). */
  viaServers?: string[];
  reason?: string;
}

export interface DeleteRoomOptions {
  reason?: string;
  /** Also delete the room's history. */
  purge?: boolean;
}

export interface DeleteRoomResult {
  kicked_users: string[];
  removed_aliases: string[];
  purged_events: number;
  blocked: boolean;
  [extra: string]: any;
}

export interface HistoryOptions {
  /** Events per call, 1..1000; default 100. */
  limit?: number;
  /** Start again from the newest messages. */
  reset?: boolean;
}

export interface HistoryPage {
  roomId: string;
  /** Oldest first. Empty once the start of the room was reached. */
  events: MatrixEvent[];
  /** False once the start of the room was reached. */
  hasMore: boolean;
}

export interface Member {
  userId: string;
  membership: "join" | "invite" | "leave" | "ban" | "knock";
  displayName?: string;
  avatarUrl?: string;
}

export interface MemberChange extends Member {
  sender: string;
  eventId: string;
}

export interface RoomSummary {
  roomId: string;
  membership: "join" | "invite" | "leave" | "ban";
  name?: string;
  topic?: string;
  canonicalAlias?: string;
  avatarUrl?: string;
  /** Who invited this user (for invites). */
  inviter?: string;
  isDirect?: boolean;
}

export interface MessageBatchInfo {
  /** True for the batch of the first sync after start(). */
  initial: boolean;
}

export interface RoomApiEvents {
  /** A room appeared: joined, or an invite arrived. */
  new: (room: RoomSummary) => void;
  /** A room changed: name, topic, alias, avatar, or this user's membership
   * (invite accepted, left, kicked, banned, room deleted). */
  update: (room: RoomSummary) => void;
  /** Memberships changed in a room. */
  members: (change: { roomId: string; members: MemberChange[] }) => void;
  /** New timeline events (non-state), all rooms of one sync batched together. */
  message: (events: MatrixEvent[], info: MessageBatchInfo) => void;
  /** getHistory delivered a page of older events. */
  history: (page: HistoryPage) => void;
  /** The live loop hit an error (it retries with backoff unless the token is invalid). */
  error: (err: RoomApiError) => void;
  /** One sync response was processed. */
  sync: (info: { nextBatch: string }) => void;
}

export interface ClientOptions {
  userId?: string;
  deviceId?: string;
  /** A fetch implementation to use instead of globalThis.fetch. */
  fetch?: typeof fetch;
}

export interface SignInOptions {
  deviceId?: string;
  deviceName?: string;
  /** register only: set this display name on the new account. */
  displayName?: string;
  fetch?: typeof fetch;
}

export interface StartOptions {
  /** Long-poll timeout in ms; default 30000. */
  timeout?: number;
  /** Timeline events per room in each sync; default 20. */
  timelineLimit?: number;
}

export class RoomApi {
  constructor(baseUrl: string, accessToken: string, opts?: ClientOptions);
  readonly baseUrl: string;
  readonly accessToken: string;
  userId?: string;
  deviceId?: string;
  /** Whether start() is running. */
  readonly running: boolean;

  static login(baseUrl: string, user: string, password: string, callback?: Callback<RoomApi>): Promise<RoomApi>;
  static login(baseUrl: string, user: string, password: string, opts?: SignInOptions, callback?: Callback<RoomApi>): Promise<RoomApi>;
  static register(baseUrl: string, user: string, password: string, callback?: Callback<RoomApi>): Promise<RoomApi>;
  static register(baseUrl: string, user: string, password: string, opts?: SignInOptions, callback?: Callback<RoomApi>): Promise<RoomApi>;

  whoami(callback?: Callback<string>): Promise<string>;
  logout(callback?: Callback<void>): Promise<void>;

  createRoom(options?: CreateRoomOptions, callback?: Callback<string>): Promise<string>;
  findDMRoomByUserId(userId: string, callback?: Callback<string[]>): Promise<string[]>;
  joinRoom(roomIdOrAlias: string, callback?: Callback<string>): Promise<string>;
  joinRoom(roomIdOrAlias: string, opts?: JoinOptions, callback?: Callback<string>): Promise<string>;
  leave(roomId: string, callback?: Callback<void>): Promise<void>;
  invite(roomId: string, userId: string, callback?: Callback<void>): Promise<void>;
  revoke(roomId: string, userId: string, callback?: Callback<void>): Promise<void>;
  revoke(roomId: string, userId: string, reason?: string, callback?: Callback<void>): Promise<void>;
  kick(roomId: string, userId: string, callback?: Callback<void>): Promise<void>;
  kick(roomId: string, userId: string, reason?: string, callback?: Callback<void>): Promise<void>;
  ban(roomId: string, userId: string, callback?: Callback<void>): Promise<void>;
  ban(roomId: string, userId: string, reason?: string, callback?: Callback<void>): Promise<void>;
  unban(roomId: string, userId: string, callback?: Callback<void>): Promise<void>;
  unban(roomId: string, userId: string, reason?: string, callback?: Callback<void>): Promise<void>;
  setNickName(roomId: string, userId: string, membershipValue: string, nickName: string, callback?: Callback<string>): Promise<string>;
  setRoomName(roomId: string, name: string, callback?: Callback<string>): Promise<string>;
  deleteRoom(roomId: string, callback?: Callback<DeleteRoomResult>): Promise<DeleteRoomResult>;
  deleteRoom(roomId: string, opts?: DeleteRoomOptions, callback?: Callback<DeleteRoomResult>): Promise<DeleteRoomResult>;

  sendMessage(roomId: string, message: string | { msgtype?: string; body: string; [k: string]: any }, callback?: Callback<string>): Promise<string>;
  getHistory(roomId: string, callback?: Callback<HistoryPage>): Promise<HistoryPage>;
  getHistory(roomId: string, opts?: HistoryOptions, callback?: Callback<HistoryPage>): Promise<HistoryPage>;
  setSeen(roomId: string, eventId: string, callback?: Callback<void>): Promise<void>;
  getMembers(roomId: string, callback?: Callback<Member[]>): Promise<Member[]>;

  start(callback?: Callback<void>): Promise<void>;
  start(opts?: StartOptions, callback?: Callback<void>): Promise<void>;
  stop(): void;
  addListener<E extends keyof RoomApiEvents>(event: E, listener: RoomApiEvents[E]): this;
  removeListener<E extends keyof RoomApiEvents>(event: E, listener: RoomApiEvents[E]): this;
}

export function createClient(baseUrl: string, accessToken: string, opts?: ClientOptions): RoomApi;
export function login(baseUrl: string, user: string, password: string, callback?: Callback<RoomApi>): Promise<RoomApi>;
export function login(baseUrl: string, user: string, password: string, opts?: SignInOptions, callback?: Callback<RoomApi>): Promise<RoomApi>;
export function register(baseUrl: string, user: string, password: string, callback?: Callback<RoomApi>): Promise<RoomApi>;
export function register(baseUrl: string, user: string, password: string, opts?: SignInOptions, callback?: Callback<RoomApi>): Promise<RoomApi>;

export default RoomApi;
