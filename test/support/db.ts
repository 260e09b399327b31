import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { openPool, type Sql } from "../../src/db/pool.ts";
import { databaseUrl, PG_ADMIN_URL, TEMPLATE_DB } from "./env.ts";

export interface TestDatabase {
  name: string;
  url: string;
  sql: Sql;
  drop(): Promise<void>;
}

/** A fresh, migrated database cloned from the template; drop() removes it. */
export async function createTestDatabase(opts: { migrated?: boolean } = {}): Promise<TestDatabase> {
  const name = `lago_billing_test_${randomBytes(5).toString("hex")}`;
  const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(
      opts.migrated === false ? `CREATE DATABASE ${name}` : `CREATE DATABASE ${name} TEMPLATE ${TEMPLATE_DB}`,
    );
  } finally {
    await admin.end();
  }
  const url = databaseUrl(name);
  const sql = openPool(url, { max: 10 });
  return {
    name,
    url,
    sql,
    async drop() {
      await sql.end({ timeout: 2 });
      const a = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
      try {
        await a.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await a.end();
      }
    },
  };
}
