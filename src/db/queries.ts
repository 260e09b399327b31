import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's `sql/` folder, found from both `src/` (tests) and `dist/` (built). */
export const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "sql");

const cache = new Map<string, string>();

/** Text of `sql/queries/<name>.sql`, read once. Queries take `$n` parameters only. */
export function query(name: string): string {
  let text = cache.get(name);
  if (text === undefined) {
    text = readFileSync(join(SQL_DIR, "queries", `${name}.sql`), "utf8");
    cache.set(name, text);
  }
  return text;
}
