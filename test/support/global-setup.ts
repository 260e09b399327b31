import postgres from "postgres";
import { migrate } from "../../src/db/migrate.ts";
import { openPool } from "../../src/db/pool.ts";
import { databaseUrl, PG_ADMIN_URL, TEMPLATE_DB } from "./env.ts";

/** Builds a migrated template database once; every test file clones it (CREATE DATABASE ... TEMPLATE). */
export async function setup(): Promise<void> {
  const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`DROP DATABASE IF EXISTS ${TEMPLATE_DB} WITH (FORCE)`);
    await admin.unsafe(`CREATE DATABASE ${TEMPLATE_DB}`);
  } finally {
    await admin.end();
  }
  const sql = openPool(databaseUrl(TEMPLATE_DB), { max: 1 });
  try {
    await migrate(sql);
  } finally {
    await sql.end();
  }
}
