import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { arrayLiteral } from "../../src/db/array-literal.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";

// The ledger sends every column of a commit as one array literal; PostgreSQL must read back exactly
// the values that went in, whatever characters they hold.
let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ migrated: false });
});
afterAll(async () => {
  await db.drop();
});

async function roundTrip(type: string, values: (string | number | null)[]): Promise<(string | null)[]> {
  const rows = await db.sql.unsafe<{ v: string | null }[]>(
    `SELECT v::text AS v FROM unnest($1::${type}[]) WITH ORDINALITY AS t(v, n) ORDER BY n`,
    [arrayLiteral(values)],
  );
  return rows.map((r) => r.v);
}

describe("arrayLiteral", () => {
  it("keeps text that looks like array syntax, NULL or nothing, and tells it from SQL NULL", async () => {
    const values = [
      "plain",
      "",
      "NULL",
      "null",
      null,
      'say "hi"',
      "back\\slash",
      '\\"',
      "{a,b}",
      "a,b",
      "  padded  ",
      "tab\tnew\nline",
      "é 😀 中文",
      '{"user_id":"u-1","tags":["a\\"b"]}',
    ];
    expect(await roundTrip("text", values)).toEqual(values);
  });

  it("round-trips random strings of the characters array syntax cares about", async () => {
    const alphabet = ['"', "\\", "{", "}", ",", " ", "N", "U", "L", "x", "\n", "'", "é"];
    let seed = 7;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const values = Array.from({ length: 500 }, () =>
      Array.from({ length: rand(12) }, () => alphabet[rand(alphabet.length)]).join(""),
    );
    expect(await roundTrip("text", values)).toEqual(values);
  });

  it("sends numbers as they print, for bigint, numeric and float8 columns", async () => {
    expect(await roundTrip("bigint", [0, 9007199254740991, -5, null])).toEqual([
      "0",
      "9007199254740991",
      "-5",
      null,
    ]);
    expect(await roundTrip("numeric", ["0.000000000001", "12345.678900000000", 1733270000.123])).toEqual([
      "0.000000000001",
      "12345.678900000000",
      "1733270000.123",
    ]);
    expect(await roundTrip("float8", [1733270000.123, 0.5])).toEqual(["1733270000.123", "0.5"]);
    expect(arrayLiteral([])).toBe("{}");
  });
});
