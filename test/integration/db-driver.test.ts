import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isDatabaseUnavailable, openPool, type Sql } from "../../src/db/pool.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { eventually } from "../support/service.ts";

// The delivery worker holds a claim's rows in a transaction on a reserved connection, and relies on
// PostgreSQL ending that session when it sits idle past LAGO_LEASE_SECONDS. postgres.js 3.4.9 then
// threw on the connection's next write where no caller could catch it, killing the process
// (porsager/postgres#1208); patches/postgres+3.4.9.patch makes it a rejected query instead.
let db: TestDatabase;
let sql: Sql;

beforeAll(async () => {
  db = await createTestDatabase();
  sql = openPool(db.url, { max: 2, idleInTransactionTimeoutMs: 300 });
});
afterAll(async () => {
  await sql.end({ timeout: 5 });
  await db.drop();
});

describe("the patched PostgreSQL driver", () => {
  for (const [name, statement] of [
    ["a short statement", "SELECT 1"],
    // Writes of 1 KiB and more go to the socket at once, shorter ones on the next tick.
    ["a long statement", `SELECT '${"x".repeat(3000)}' AS filler`],
  ] as const) {
    it(`rejects ${name} on a reserved connection whose session PostgreSQL ended, and recovers`, async () => {
      const conn = await sql.reserve();
      await conn.unsafe("BEGIN");
      const [me] = await conn.unsafe<{ pid: number }[]>("SELECT pg_backend_pid() AS pid");
      // Idle in transaction past the timeout: PostgreSQL ends the session.
      await eventually(
        async () =>
          (await db.sql`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ${me?.pid as number}`)[0]
            ?.n === 0,
        "the session ended by idle_in_transaction_session_timeout",
      );
      for (const s of [statement, "ROLLBACK"]) {
        const err = await conn.unsafe(s).then(
          () => null,
          (e: unknown) => e,
        );
        expect(isDatabaseUnavailable(err), String(err)).toBe(true);
      }
      conn.release();
      // The closed connection reconnects when next needed; the pool serves every query.
      const rows = await Promise.all(Array.from({ length: 6 }, () => sql.unsafe("SELECT 1 AS one")));
      expect(rows.map((r) => r[0]?.one)).toEqual([1, 1, 1, 1, 1, 1]);
    });
  }
});
