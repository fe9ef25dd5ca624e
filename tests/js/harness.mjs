// Test harness: a live homeserver for the JavaScript Room API tests.
//
// startServer() spawns `.venv/bin/homeserver serve` with a fresh data
// directory (embedded PostgreSQL), free ports and server name
// localhost:<port>, waits for /_matrix/client/versions and returns
// {baseUrl, serverName, stop}. stop() sends SIGTERM and waits for the exit.
//
// HOMESERVER_JS_BASE_URL=http://host:port uses a server that is already
// running instead (with registration open). HOMESERVER_BIN overrides the
// server command.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, chmodSync, rmSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const WEB_DIR = join(REPO, "homeserver", "web");
export const MODULE_PATH = join(WEB_DIR, "room-api.js");

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function serverCommand() {
  if (process.env.HOMESERVER_BIN) return process.env.HOMESERVER_BIN;
  const venv = join(REPO, ".venv", "bin", "homeserver");
  return existsSync(venv) ? venv : "homeserver";
}

let unique = 0;
/** A user name no other test (or earlier run against the same server) used. */
export function uniqueName(prefix) {
  unique += 1;
  return `${prefix}${Date.now().toString(36)}${process.pid}x${unique}`.toLowerCase();
}

export async function startServer() {
  if (process.env.HOMESERVER_JS_BASE_URL) {
    const baseUrl = process.env.HOMESERVER_JS_BASE_URL.replace(/\/+$/, "");
    return { baseUrl, stop: async () => {}, log: () => "" };
  }
  const [clientPort, federationPort] = [await freePort(), await freePort()];
  const dataDir = mkdtempSync(join(tmpdir(), "hs-js-test-"));
  // The embedded PostgreSQL may run as another user: let it into the folder.
  chmodSync(dataDir, 0o755);
  const serverName = `localhost:${clientPort}`;
  const logPath = join(dataDir, "server.log");
  let output = "";
  const child = spawn(
    serverCommand(),
    [
      "serve",
      "--data-dir", dataDir,
      "--bind", "127.0.0.1",
      "--client-port", String(clientPort),
      "--federation-port", String(federationPort),
      "--server-name", serverName,
    ],
    {
      stdio: ["ignore", "pipe", "pipe"],
      // Rate limits lifted, as for every test setup (docs/security.md).
      env: { ...process.env, PYTHONUNBUFFERED: "1", HOMESERVER_RATE_LIMITS_ENABLED: "false" },
    },
  );
  const keep = (chunk) => {
    output += chunk.toString();
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  let exited = null;
  const exitPromise = new Promise((res) => {
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      res(exited);
    });
  });
  // A killed server leaves its embedded PostgreSQL running: stop that too.
  const killPostgres = () => {
    try {
      const pid = Number(readFileSync(join(dataDir, "postgres", "postmaster.pid"), "utf8").split("\n")[0]);
      if (pid > 0) process.kill(pid, "SIGTERM");
    } catch {
      // not started, or already gone
    }
  };
  const killOnExit = () => {
    if (exited === null) {
      child.kill("SIGKILL");
      killPostgres();
    }
  };
  process.on("exit", killOnExit);

  const baseUrl = `http://127.0.0.1:${clientPort}`;
  const deadline = Date.now() + 90_000;
  for (;;) {
    if (exited !== null) {
      killPostgres();
      rmSync(dataDir, { recursive: true, force: true });
      throw new Error(`homeserver exited early (${JSON.stringify(exited)}):\n${output}`);
    }
    try {
      const res = await fetch(`${baseUrl}/_matrix/client/versions`);
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      killPostgres();
      throw new Error(`homeserver did not start within 90 s:\n${output}`);
    }
    await sleep(200);
  }

  // SIGTERM; the server finishes in-flight requests first (an open /sync
  // long poll may hold it up to that poll's timeout), so wait a while before
  // SIGKILL (and then stop its PostgreSQL ourselves).
  async function stop() {
    if (exited === null) {
      child.kill("SIGTERM");
      let killed = false;
      const timer = setTimeout(() => {
        killed = true;
        child.kill("SIGKILL");
      }, 45_000);
      await exitPromise;
      clearTimeout(timer);
      if (killed) killPostgres();
    }
    process.off("exit", killOnExit);
    rmSync(dataDir, { recursive: true, force: true });
  }
  return { baseUrl, serverName, stop, log: () => output, logPath };
}

/** Read a file of the web folder (to compare with what the server serves). */
export function webFile(name) {
  return readFileSync(join(WEB_DIR, name));
}

/** Wait until `predicate()` is truthy (polling), or fail after `ms`. */
export async function waitFor(predicate, what = "condition", ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}
