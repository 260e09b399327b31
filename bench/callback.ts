/**
 * The billing callback's own CPU in the proxy process, per call (issue 12 item 1: "the proxy's CPU
 * per call not more than 5 % above today's"). Whole-proxy CPU moves by more than 5 % between rounds
 * of bench/litellm.ts, so this measures the callback alone: bench/callback_cpu.py loads a version of
 * proxy/lago_billing.py in LiteLLM's Python, calls its success hook once per call at a fixed rate on
 * its event loop (as the proxy does, with a captured LiteLLM payload), and waits until the real
 * webhook service has acknowledged every record. Cases, interleaved over rounds:
 *
 *   - no callback: the driver's own loop (subtracted from the others);
 *   - before issue 12: the module of commit c6b4da9 (0.5 s batching window, httpx), from git;
 *   - send at once over httpx: this module with the client it used until 2026-12-04;
 *   - send at once, default client (aiohttp where LiteLLM is installed): what ships.
 *
 *   node bench/callback.ts [--rate 25] [--seconds 20] [--rounds 3] [--smoke]
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createDatabase, freePort, machineInfo, SECRET, startService, waitHealthy } from "./harness.ts";
import { fmt, percentile, Report, table } from "./lib.ts";
import { saveResult } from "./results.ts";

const percentile50 = (values: number[]) => percentile(values, 50);

const { values: args } = parseArgs({
  options: {
    rate: { type: "string", default: "25" },
    seconds: { type: "string", default: "20" },
    rounds: { type: "string", default: "3" },
    smoke: { type: "boolean", default: false },
  },
});
const rate = Number(args.rate);
const seconds = args.smoke ? 1 : Number(args.seconds);
const rounds = args.smoke ? 1 : Number(args.rounds);
const PYTHON = ".venv/litellm/bin/python";
const BEFORE_COMMIT = "c6b4da9";

interface Run {
  calls: number;
  delivered: number;
  posts: number;
  wall_s: number;
  main_cpu_s: number;
  sender_cpu_s: number;
  process_cpu_s: number;
}

interface Case {
  name: string;
  args: string[];
  runs: Run[];
}

function drive(caseArgs: string[], url: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      PYTHON,
      [
        "bench/callback_cpu.py",
        ...caseArgs,
        "--url",
        url,
        "--secret",
        SECRET,
        "--rate",
        String(rate),
        "--seconds",
        String(seconds),
      ],
      // The local cost map: LiteLLM's import would otherwise fetch it from GitHub in a thread.
      { env: { ...process.env, LITELLM_LOCAL_MODEL_COST_MAP: "True" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.on("exit", (code) => {
      const last = out.trim().split("\n").pop() ?? "";
      if (code !== 0 || !last.startsWith("{")) reject(new Error(`callback_cpu.py failed (${code}):\n${err}`));
      else resolve(JSON.parse(last) as Run);
    });
  });
}

async function main(): Promise<void> {
  const report = new Report();
  report.line("Billing callback benchmark: its CPU in the proxy process per call");
  report.line(await machineInfo());
  report.line(
    `${rate} calls/s for ${seconds} s per run, ${rounds} round(s), cases interleaved; one captured LiteLLM payload ` +
      "(test/fixtures/litellm/nonstream.json, 14.6 KB) per call, to the real webhook service (WORKER_ENABLED=false).",
  );

  const db = await createDatabase("bench_callback");
  const migrate = startService(["migrate"], { DATABASE_URL: db.url });
  await new Promise((r) => migrate.child.on("exit", r));
  const port = await freePort();
  const svc = startService(["serve", "--host", "127.0.0.1", "--port", String(port)], {
    DATABASE_URL: db.url,
    WORKER_ENABLED: "false",
  });
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy(`${url}/health`, svc);

  const cases: Case[] = [
    { name: "no callback (the driver's own loop)", args: ["--module", "none"], runs: [] },
  ];
  try {
    const dir = mkdtempSync(join(tmpdir(), "callback-before-"));
    const file = join(dir, "lago_billing.py");
    writeFileSync(file, execFileSync("git", ["show", `${BEFORE_COMMIT}:proxy/lago_billing.py`]));
    cases.push({
      name: `before issue 12 (${BEFORE_COMMIT}: 0.5 s window, httpx)`,
      args: ["--module", file],
      runs: [],
    });
  } catch {
    report.line(`(commit ${BEFORE_COMMIT} is not in this clone's history: the "before" case is left out)`);
  }
  cases.push(
    {
      name: "send at once, httpx (until 2026-12-04)",
      args: ["--module", "proxy/lago_billing.py", "--transport", "httpx"],
      runs: [],
    },
    { name: "send at once, default client (aiohttp)", args: ["--module", "proxy/lago_billing.py"], runs: [] },
  );

  try {
    for (let r = 0; r < rounds; r++) {
      for (const c of cases) c.runs.push(await drive(c.args, url));
    }
  } finally {
    await svc.stop();
    await db.drop();
  }

  /** Per case: medians of the rounds of each per-call CPU figure, the process's spread, calls lost. */
  const stats = cases.map((c) => {
    const per = (f: (r: Run) => number) => c.runs.map((r) => f(r) / r.calls);
    const proc = per((r) => r.process_cpu_s);
    return {
      c,
      main: percentile50(per((r) => r.main_cpu_s)),
      sender: percentile50(per((r) => r.sender_cpu_s)),
      proc: percentile50(proc),
      procMin: Math.min(...proc),
      procMax: Math.max(...proc),
      posts: percentile50(per((r) => r.posts)),
      lost: c.runs.reduce((s, r) => s + (r.calls - r.delivered), 0),
    };
  });
  const base = stats[0] as (typeof stats)[number];
  const us = (s: number) => fmt(s * 1e6, 0);
  report.line("");
  report.line(
    "µs of CPU per call, median of the rounds (spread lowest–highest of the process column); 'callback' is the process minus the driver alone",
  );
  const rows = stats.map((x) => [
    x.c.name,
    us(x === base ? x.main : x.main - base.main),
    us(x.sender),
    `${us(x.proc)} (${us(x.procMin)}–${us(x.procMax)})`,
    x === base ? "" : us(x.proc - base.proc),
    fmt(x.posts, 2),
    String(x.lost),
  ]);
  report.block(
    table(
      [
        "case",
        "proxy's loop (enqueue)",
        "sender thread",
        "process",
        "callback",
        "POSTs per call",
        "not delivered",
      ],
      rows,
    ),
  );
  const before = stats.find((x) => x.c.name.startsWith("before"));
  const now = stats[stats.length - 1] as (typeof stats)[number];
  if (before) {
    report.line("");
    report.line(
      `the shipped callback costs ${us(now.proc - before.proc)} µs of CPU per call more than before issue 12; ` +
        "as a share of the proxy's CPU per call, divide by (a) of bench/litellm.ts (about 20 ms on these machines)",
    );
  }
  const lost = stats.reduce((s, x) => s + x.lost, 0);
  report.line(
    `correctness: ${lost === 0 ? "every call acknowledged by the service" : `${lost} calls NOT delivered`}`,
  );
  if (!args.smoke) saveResult("callback", report.lines.join("\n"));
  if (lost > 0) process.exitCode = 1;
}

await main();
