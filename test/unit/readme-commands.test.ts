import { existsSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

/**
 * Every shell block in the README is either run by a test or marked as needing Docker: within the
 * two lines before its opening fence it carries `<!-- executed by test/<file> ... -->` (naming a test
 * file that exists) or `<!-- docker-only -->`.
 */
const lines = readFileSync("README.md", "utf8").split("\n");

interface Block {
  line: number; // 1-based line of the opening fence
  text: string;
  marker: string | undefined;
}

function bashBlocks(): Block[] {
  const blocks: Block[] = [];
  let inFence = false;
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i] ?? "";
    if (!l.startsWith("```")) continue;
    if (inFence) {
      inFence = false;
      continue;
    }
    inFence = true;
    if (!/^```(bash|sh|shell|console)\s*$/.test(l)) continue;
    let end = i + 1;
    while (end < lines.length && !(lines[end] ?? "").startsWith("```")) end++;
    const before = lines.slice(Math.max(0, i - 2), i).map((s) => s.trim());
    blocks.push({
      line: i + 1,
      text: lines.slice(i + 1, end).join("\n"),
      marker: before.reverse().find((s) => /^<!--.*-->$/.test(s)),
    });
  }
  return blocks;
}

/** undefined when the marker is valid, else why not. */
function problem(block: Block): string | undefined {
  if (!block.marker) return "no marker";
  if (/^<!-- docker-only( \(.*\))? -->$/.test(block.marker)) return undefined;
  const m = /^<!-- executed by (test\/\S+\.test\.ts)\b.*-->$/.exec(block.marker);
  if (!m) return `unknown marker ${block.marker}`;
  if (!existsSync(m[1] as string)) return `${m[1]} does not exist`;
  return undefined;
}

describe("README shell commands", () => {
  it("has shell blocks to check", () => {
    expect(bashBlocks().length).toBeGreaterThan(0);
  });

  it("marks every shell block as executed by a test or as Docker-only", () => {
    const offending = bashBlocks()
      .map((b) => ({ b, why: problem(b) }))
      .filter((x) => x.why !== undefined)
      .map(({ b, why }) => `README.md:${b.line} (${why})\n${b.text}`);
    expect(offending, `unmarked README shell blocks:\n\n${offending.join("\n\n")}`).toEqual([]);
  });
});
