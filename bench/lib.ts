/**
 * Shared benchmark helpers: percentiles, text tables, a report that prints and can be saved, CPU time
 * of process trees read from /proc, machine information, and child processes that are always cleaned
 * up (process groups killed on exit, SIGINT, SIGTERM and errors).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname } from "node:path";
import { createInterface } from "node:readline";

// ------------------------------------------------------------------ numbers

/** Nearest-rank percentile (p in 0..100) of an unsorted list; NaN when empty. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = Float64Array.from(values).sort();
  return sortedPercentile(sorted, p);
}

/** Nearest-rank percentile of an already sorted list. */
export function sortedPercentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))] as number;
}

export interface Summary {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function summarize(values: readonly number[]): Summary {
  const sorted = Float64Array.from(values).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    n: sorted.length,
    p50: sortedPercentile(sorted, 50),
    p90: sortedPercentile(sorted, 90),
    p99: sortedPercentile(sorted, 99),
    max: sorted.length > 0 ? (sorted[sorted.length - 1] as number) : Number.NaN,
    mean: sorted.length > 0 ? sum / sorted.length : Number.NaN,
  };
}

/** A number with a fixed count of decimals, "-" for NaN/undefined. */
export function fmt(v: number | undefined | null, digits = 1): string {
  if (v === undefined || v === null || Number.isNaN(v)) return "-";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function pct(ratio: number, digits = 1): string {
  return Number.isFinite(ratio) ? `${fmt(ratio * 100, digits)} %` : "-";
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls check() every intervalMs until it returns a truthy value or timeoutMs passes (then undefined). */
export async function poll<T>(
  check: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  timeoutMs: number,
  intervalMs = 200,
): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() >= deadline) return undefined;
    await sleep(intervalMs);
  }
}

// ------------------------------------------------------------------ tables and the report

/** Column-aligned text table; numeric-looking cells are right-aligned. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? "").length)));
  const numeric = /^[-+]?[\d,.]+( ?(%|ms|s|x))?$|^-$/;
  const line = (r: readonly string[]) =>
    r
      .map((c, i) => {
        const w = widths[i] ?? 0;
        return i > 0 && numeric.test(c) ? c.padStart(w) : c.padEnd(w);
      })
      .join("  ")
      .trimEnd();
  const sep = widths.map((w) => "-".repeat(w)).join("  ");
  return [line(header), sep, ...rows.map(line)].join("\n");
}

/** "met" / "missed" next to a figure and its target. */
export function verdict(ok: boolean | undefined): string {
  return ok === undefined ? "n/a" : ok ? "met" : "MISSED";
}

/** Lines printed as they come and kept, to be written to a results file. */
export class Report {
  readonly lines: string[] = [];
  line(text = ""): void {
    this.lines.push(text);
    process.stdout.write(`${text}\n`);
  }
  section(title: string): void {
    this.line();
    this.line(title);
    this.line("=".repeat(title.length));
  }
  block(text: string): void {
    for (const l of text.split("\n")) this.line(l);
  }
  save(path: string): void {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, `${this.lines.join("\n")}\n`);
  }
}

/** Progress messages on stderr (not part of the report). */
export function progress(msg: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

// ------------------------------------------------------------------ CPU time from /proc

let clkTck = 0;
function ticksPerSecond(): number {
  if (clkTck === 0) {
    try {
      clkTck = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

interface ProcStat {
  pid: number;
  ppid: number;
  /** utime + stime, ticks */
  self: number;
  /** cutime + cstime (children already reaped), ticks */
  reaped: number;
}

function readStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return null;
  }
  // The command name (field 2) may contain spaces and parentheses: fields restart after the last ')'.
  const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
  // f[0] is field 3 (state): ppid = field 4, utime = 14, stime = 15, cutime = 16, cstime = 17.
  const n = (field: number) => Number(f[field - 3]);
  return { pid, ppid: n(4), self: n(14) + n(15), reaped: n(16) + n(17) };
}

function allPids(): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .map(Number);
}

/** pid and all its live descendants. */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const pid of allPids()) {
    const s = readStat(pid);
    if (!s) continue;
    const list = children.get(s.ppid);
    if (list) list.push(pid);
    else children.set(s.ppid, [pid]);
  }
  const out: number[] = [];
  const stack = [root];
  while (stack.length > 0) {
    const pid = stack.pop() as number;
    out.push(pid);
    for (const c of children.get(pid) ?? []) stack.push(c);
  }
  return out;
}

/**
 * CPU seconds (user + system) used so far by a process tree: every live process's own time plus the
 * time of children it has already reaped. Deltas of this value between two moments are the tree's CPU
 * use in between (a child that exits in between moves from "live" to its parent's reaped time).
 */
export function treeCpuSeconds(root: number): number {
  let ticks = 0;
  for (const pid of processTree(root)) {
    const s = readStat(pid);
    if (s) ticks += s.self + s.reaped;
  }
  return ticks / ticksPerSecond();
}

/** CPU seconds of the given processes (own time only: for processes shared with others). */
export function pidsCpuSeconds(pids: readonly number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    const s = readStat(pid);
    if (s) ticks += s.self;
  }
  return ticks / ticksPerSecond();
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim();
  } catch {
    return "";
  }
}

/**
 * PostgreSQL server processes relevant to one database: the backends connected to `database` plus the
 * server's shared background processes (checkpointer, WAL writer, background writer, autovacuum...),
 * never the postmaster (whose reaped-children time includes every other database's backends).
 */
export function postgresPids(database: string): number[] {
  let pids: number[];
  try {
    pids = execFileSync("pgrep", ["-u", "postgres"], { encoding: "utf8" })
      .split("\n")
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const pid of pids) {
    const cmd = cmdline(pid);
    // Backends: "postgres: 15/main: <user> <database> <host>(port) <state>"; aux: "postgres: 15/main: walwriter".
    const m = /^postgres: (?:[^:]+: )?(\S+) (\S+) (\S+\(\d+\)|\[local\])/.exec(cmd);
    if (m) {
      if (m[2] === database) out.push(pid);
    } else if (/^postgres: /.test(cmd)) {
      out.push(pid);
    }
  }
  return out;
}

/**
 * CPU seconds (own time) of the PostgreSQL processes serving `database`, each counted once. A backend
 * that connects or exits between two samples is missing from one of them, so measure with pools that
 * stay connected.
 */
export function postgresCpuSeconds(database: string): number {
  return pidsCpuSeconds(postgresPids(database));
}

/** Named groups of processes whose CPU time can be sampled together. */
export type CpuGroups = Record<string, () => number>;

export function sampleCpu(groups: CpuGroups): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, f] of Object.entries(groups)) out[name] = f();
  return out;
}

export function cpuDelta(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(b)) out[k] = (b[k] ?? 0) - (a[k] ?? 0);
  return out;
}

// ------------------------------------------------------------------ machine information

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  loadAverage: string;
  [key: string]: string | number;
}

export function machineInfo(extra: Record<string, string> = {}): MachineInfo {
  let cpuModel = os.cpus()[0]?.model ?? "unknown";
  try {
    const m = /model name\s*:\s*(.+)/.exec(readFileSync("/proc/cpuinfo", "utf8"));
    if (m?.[1]) cpuModel = m[1].trim();
  } catch {
    // not Linux
  }
  return {
    cpuModel,
    cores: os.availableParallelism(),
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    loadAverage: os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(" "),
    ...extra,
  };
}

export function machineLines(info: MachineInfo): string {
  const rows: string[][] = [
    ["CPU", `${info.cpuModel} (${info.cores} cores)`],
    ["memory", `${info.memoryGiB} GiB`],
    ["kernel", info.kernel],
    ["Node", info.node],
  ];
  for (const [k, v] of Object.entries(info)) {
    if (["cpuModel", "cores", "memoryGiB", "kernel", "node", "loadAverage"].includes(k)) continue;
    rows.push([k, String(v)]);
  }
  rows.push(["load average at start", info.loadAverage]);
  const w = Math.max(...rows.map((r) => (r[0] ?? "").length));
  return rows.map(([k, v]) => `${(k ?? "").padEnd(w)}  ${v}`).join("\n");
}

// ------------------------------------------------------------------ child processes

const cleanups: (() => Promise<void> | void)[] = [];
let cleaning: Promise<void> | null = null;

/** Registers a cleanup step; steps run in reverse order on exit, SIGINT, SIGTERM or a fatal error. */
export function onCleanup(fn: () => Promise<void> | void): void {
  cleanups.push(fn);
}

/** Runs every registered cleanup step once (later calls wait for the first). */
export function cleanup(): Promise<void> {
  if (!cleaning) {
    cleaning = (async () => {
      while (cleanups.length > 0) {
        const fn = cleanups.pop() as () => Promise<void> | void;
        try {
          // One stuck step must not keep the others (and the processes they stop) from running.
          await Promise.race([
            fn(),
            sleep(30_000).then(() => progress("a cleanup step took more than 30 s; going on")),
          ]);
        } catch (err) {
          progress(`cleanup step failed: ${(err as Error).message}`);
        }
      }
    })();
  }
  return cleaning;
}

/** Cleans up on SIGINT/SIGTERM (exit 130/143). */
export function installSignalCleanup(): void {
  for (const [sig, code] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const) {
    process.once(sig, () => {
      progress(`${sig}: stopping every process started by the benchmark`);
      const force = setTimeout(() => process.exit(code), 30_000);
      force.unref();
      cleanup().finally(() => process.exit(code));
    });
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

/**
 * Stops a process tree: SIGTERM to every process (and to the process group when the root leads one),
 * then SIGKILL to whatever is still alive after graceMs.
 */
export async function killTree(root: number, graceMs = 10_000): Promise<void> {
  const pids = processTree(root);
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(-root, sig);
    } catch {
      // not a group leader
    }
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch {
        // gone
      }
    }
  };
  signal("SIGTERM");
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && pids.some(alive)) await sleep(100);
  if (pids.some(alive)) signal("SIGKILL");
}

export interface Child {
  name: string;
  child: ChildProcess;
  pid: number;
  /** Last output (stdout + stderr), for error messages. */
  output(): string;
  /** The first stdout line, parsed as JSON (the test servers print {"url": ...}). */
  firstLine: Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

/**
 * Spawns a process in its own process group (so it and its children can be measured and killed as a
 * tree) and registers its cleanup.
 */
export function spawnChild(
  name: string,
  command: string,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string } = {},
): Child {
  const child = spawn(command, args, {
    cwd: opts.cwd,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  if (child.pid === undefined) throw new Error(`could not start ${name}`);
  const pid = child.pid;
  let out = "";
  const keep = (d: Buffer) => {
    out = (out + d.toString()).slice(-20_000);
  };
  child.stderr?.on("data", keep);
  const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const firstLine = new Promise<Record<string, unknown>>((resolve, reject) => {
    let first = true;
    rl.on("line", (l) => {
      keep(Buffer.from(`${l}\n`));
      if (!first) return;
      first = false;
      try {
        resolve(JSON.parse(l) as Record<string, unknown>);
      } catch {
        reject(new Error(`${name}: unexpected first line ${l}`));
      }
    });
    child.once("exit", (code) => reject(new Error(`${name} exited with code ${code}\n${out.slice(-3000)}`)));
  });
  firstLine.catch(() => undefined);
  let stopped: Promise<void> | null = null;
  const stop = () => {
    if (!stopped) {
      stopped = (async () => {
        if (child.exitCode === null && child.signalCode === null) {
          const exited = once(child, "exit").catch(() => undefined);
          await killTree(pid);
          await Promise.race([exited, sleep(2000)]);
        }
      })();
    }
    return stopped;
  };
  onCleanup(stop);
  return { name, child, pid, output: () => out, firstLine, stop };
}
