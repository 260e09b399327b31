import { mkdirSync, writeFileSync } from "node:fs";

/** Keeps a full run's report under bench/results/<name>-<UTC date>.txt. */
export function saveResult(name: string, text: string): void {
  mkdirSync("bench/results", { recursive: true });
  const file = `bench/results/${name}-${new Date().toISOString().slice(0, 16).replace(/[:T]/g, "")}.txt`;
  writeFileSync(file, `${text}\n`);
  process.stdout.write(`saved ${file}\n`);
}
