/**
 * A PostgreSQL array literal (`{"a","b",NULL}`) for a one-dimensional array parameter, sent as text
 * and cast in SQL (`$1::text[]`, `$2::bigint[]`). postgres.js serialises a JS array the same way but
 * escapes every element with two global regex replaces; most of our values (ids, model names,
 * numbers, hashes) hold neither `"` nor `\`, and checking for them first halves the cost
 * (BENCHMARKS.md). Strings are always quoted, so "NULL", "", braces, commas and spaces stay text;
 * null is SQL NULL.
 */
export function arrayLiteral(values: readonly (string | number | null)[]): string {
  let out = "{";
  for (let i = 0; i < values.length; i++) {
    if (i > 0) out += ",";
    const v = values[i];
    if (v === null) out += "NULL";
    else if (typeof v === "string") out += `"${escapeElement(v)}"`;
    else out += String(v);
  }
  return `${out}}`;
}

function escapeElement(s: string): string {
  if (s.indexOf('"') === -1 && s.indexOf("\\") === -1) return s;
  return s.replace(/\\/g, "\\\\").replace(/"/g, '\\"');
}
