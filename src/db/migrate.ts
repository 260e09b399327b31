import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Sql } from "./pool.ts";
import { SQL_DIR } from "./queries.ts";

export interface Migration {
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

/** Numbered `.sql` files in sql/migrations, in order. */
export function loadMigrations(dir = join(SQL_DIR, "migrations")): Migration[] {
  return readdirSync(dir)
    .filter((f) => /^\d{6}_[\w-]+\.sql$/.test(f))
    .sort()
    .map((file) => {
      const sql = readFileSync(join(dir, file), "utf8");
      return {
        version: Number(file.slice(0, 6)),
        name: file.replace(/\.sql$/, ""),
        sql,
        checksum: createHash("sha256").update(sql).digest("hex"),
      };
    });
}

// Any fixed number: every migrator, in any process or replica, takes the same lock.
const MIGRATION_LOCK = 7_305_111_001;

/**
 * Applies pending migrations, each in its own transaction, under a session advisory lock so that
 * replicas starting together apply each version exactly once. Refuses to run when an applied
 * migration's file was changed afterwards.
 */
export async function migrate(sql: Sql, migrations = loadMigrations()): Promise<string[]> {
  const applied: string[] = [];
  await sql.reserve().then(async (conn) => {
    try {
      await conn`SELECT pg_advisory_lock(${MIGRATION_LOCK})`;
      await conn`
        CREATE TABLE IF NOT EXISTS schema_migrations (
          version integer PRIMARY KEY,
          name text NOT NULL,
          checksum text NOT NULL,
          applied_at timestamptz NOT NULL DEFAULT now()
        )`;
      const rows = await conn<{ version: number; name: string; checksum: string }[]>`
        SELECT version, name, checksum FROM schema_migrations ORDER BY version`;
      const done = new Map(rows.map((r) => [r.version, r]));
      for (const m of migrations) {
        const prior = done.get(m.version);
        if (prior) {
          if (prior.checksum !== m.checksum) {
            throw new Error(
              `migration ${m.name} was changed after it was applied (checksum differs): ` +
                "restore the original file and add a new numbered migration instead",
            );
          }
          continue;
        }
        // Version row first: a racing migrator without the lock would fail on the primary key.
        await conn.unsafe("BEGIN");
        try {
          await conn`INSERT INTO schema_migrations (version, name, checksum) VALUES (${m.version}, ${m.name}, ${m.checksum})`;
          await conn.unsafe(m.sql);
          await conn.unsafe("COMMIT");
        } catch (err) {
          await conn.unsafe("ROLLBACK").catch(() => {});
          throw new Error(`migration ${m.name} failed: ${(err as Error).message}`);
        }
        applied.push(m.name);
      }
    } finally {
      await conn`SELECT pg_advisory_unlock(${MIGRATION_LOCK})`.catch(() => {});
      conn.release();
    }
  });
  return applied;
}
