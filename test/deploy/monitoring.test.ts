// The Grafana dashboard and provisioning (deploy/grafana/) and the metric names of every query: each
// name in a dashboard panel, an alert or a recording rule must be exported by a live webhook service
// (/health/metrics of a real service on a test database) or by a live LiteLLM billing callback
// (proxy/lago_billing.py with LAGO_BILLING_METRICS_PORT), be one of our recording rules, or be
// Prometheus' own `up`. A renamed metric breaks this test instead of a panel or an alert.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { freePort } from "../support/process.ts";
import { startService, type TestService } from "../support/service.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const read = (rel: string): string => readFileSync(join(ROOT, rel), "utf8");
const PYTHON = join(ROOT, ".venv/litellm/bin/python");

type Target = { refId?: string; expr?: string; datasource?: { uid?: string } };
type Panel = {
  id: number;
  type: string;
  title: string;
  description?: string;
  targets?: Target[];
  panels?: Panel[];
};
type Dashboard = { uid: string; title: string; panels: Panel[] };
type RuleFile = { groups: { rules: { alert?: string; record?: string; expr: string }[] }[] };

const dashboard = JSON.parse(read("deploy/grafana/dashboards/lago-billing.json")) as Dashboard;
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]).filter((p) => p.type !== "row");
const ruleFiles = ["deploy/prometheus/rules.yml", "deploy/prometheus/alerts.yml"].map(
  (f) => [f, YAML.parse(read(f)) as RuleFile] as const,
);
const rules = ruleFiles.flatMap(([file, doc]) =>
  doc.groups.flatMap((g) => g.rules.map((r) => ({ ...r, file }))),
);
const recorded = new Set(rules.flatMap((r) => (r.record ? [r.record] : [])));

const KEYWORDS = new Set([
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "and",
  "or",
  "unless",
  "bool",
  "offset",
  "inf",
  "nan",
]);

/**
 * Metric names a PromQL expression reads: strings, label matchers, ranges and the label lists of
 * by/without/on/ignoring/group_* removed; what is left and not followed by `(` (a function or an
 * aggregation) nor a keyword or number is a metric name.
 */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ")
    .replace(/\boffset\s+-?\d+[smhdwy]+/g, " ");
  const names = new Set<string>();
  for (const m of stripped.matchAll(/([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?/g)) {
    const [, name, call] = m;
    if (!name || call || KEYWORDS.has(name.toLowerCase())) continue;
    // Durations or numbers glued to letters (5m, 1e3) start with a digit and never match here.
    names.add(name);
  }
  return [...names];
}

/** Metric names and types from the `# TYPE` lines of a text exposition (declared even before a sample). */
function exposition(text: string): Map<string, string> {
  const types = new Map<string, string>();
  for (const m of text.matchAll(/^# TYPE ([A-Za-z_:][A-Za-z0-9_:]*) (\w+)$/gm)) {
    if (m[1] && m[2]) types.set(m[1], m[2]);
  }
  return types;
}

/** The exported metric a series name belongs to (histogram/summary series carry a suffix). */
function exportedAs(name: string, types: Map<string, string>): string | undefined {
  if (types.has(name)) return name;
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (m?.[1] && ["histogram", "summary"].includes(types.get(m[1]) ?? "")) {
    if (m[2] === "bucket" && types.get(m[1]) !== "histogram") return undefined;
    return m[1];
  }
  return undefined;
}

describe("metricNames (PromQL parsing)", () => {
  it("keeps metric names and drops functions, label matchers, ranges, grouping labels and keywords", () => {
    expect(
      metricNames(
        'histogram_quantile(0.95, sum by (le, route) (rate(lago_billing_http_request_duration_seconds_bucket{route=~"/webhooks/(usage|litellm)",x="a{b}"}[5m])))',
      ),
    ).toEqual(["lago_billing_http_request_duration_seconds_bucket"]);
    expect(
      metricNames(
        "max(a_total) > 0 and on (instance) (time() - b_seconds offset 5m) > 3 * max without (job) (c) unless sum(increase(d_total[1h])) > 0 or lago_billing:x:rate5m",
      ).sort(),
    ).toEqual(["a_total", "b_seconds", "c", "d_total", "lago_billing:x:rate5m"]);
    expect(metricNames('absent(up{job="webhook-service"})')).toEqual(["up"]);
    expect(metricNames("count by (state) (lago_billing_sink_state == 1)")).toEqual([
      "lago_billing_sink_state",
    ]);
  });
});

describe("deploy/grafana", () => {
  const datasources = YAML.parse(read("deploy/grafana/provisioning/datasources/prometheus.yml")) as {
    datasources: { uid: string; type: string; url: string }[];
  };
  const providers = YAML.parse(read("deploy/grafana/provisioning/dashboards/lago-billing.yml")) as {
    providers: { type: string; options: { path: string } }[];
  };

  it("provisions the Prometheus datasource the dashboard names and the dashboards folder", () => {
    const [ds] = datasources.datasources;
    expect(ds).toMatchObject({ type: "prometheus", url: "http://prometheus:9090" });
    expect(providers.providers[0]).toMatchObject({
      type: "file",
      options: { path: "/etc/grafana/dashboards" },
    });
    for (const p of panels) {
      for (const t of p.targets ?? []) expect(t.datasource?.uid, p.title).toBe(ds?.uid);
    }
    // Every JSON file of the dashboards folder parses.
    for (const f of readdirSync(join(ROOT, "deploy/grafana/dashboards"))) {
      expect(() => JSON.parse(read(`deploy/grafana/dashboards/${f}`)), f).not.toThrow();
    }
  });

  it("has the panels the issue lists, each with a description and at least one query", () => {
    expect(dashboard.uid).toBe("lago-billing");
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size, "unique panel ids").toBe(ids.length);
    for (const p of panels) {
      expect(p.description, `${p.title}: description`).toMatch(/\S{3,}/);
      expect(p.targets?.length, `${p.title}: queries`).toBeGreaterThan(0);
      for (const t of p.targets ?? []) expect(t.expr?.trim(), `${p.title} ${t.refId}`).toBeTruthy();
    }
    const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? "")).join("\n");
    for (const needle of [
      "usage_events_received",
      "lago_events_delivered",
      "delivery_lag_seconds",
      "lago_billing:lago_events:max",
      "oldest_pending_age_seconds",
      "lago_events_parked",
      "lago_requests",
      "lago_rate_limited_total",
      "drift_unexplained_calls",
      "drift_calls",
      "callback_queue_records",
      "callback_spool_bytes",
      "process_cpu_seconds_total",
      "process_resident_memory_bytes",
      "nodejs_eventloop_lag",
    ]) {
      expect(exprs, needle).toContain(needle);
    }
  });
});

describe("every metric name of the dashboard and the rules is exported", () => {
  let db: TestDatabase;
  let svc: TestService;
  let callback: ChildProcess | undefined;
  let callbackOutput = "";
  let service = new Map<string, string>();
  let litellm = new Map<string, string>();

  beforeAll(async () => {
    expect(existsSync(PYTHON), `${PYTHON} (scripts/ensure-litellm.sh makes it)`).toBe(true);
    db = await createTestDatabase();
    svc = await startService(db.url);
    const res = await svc.app.inject({ method: "GET", url: "/health/metrics" });
    expect(res.statusCode).toBe(200);
    service = exposition(res.body);

    const port = await freePort();
    callback = spawn(
      PYTHON,
      ["-c", "import sys,time; sys.path.insert(0,'proxy'); import lago_billing; time.sleep(120)"],
      {
        cwd: ROOT,
        env: {
          PATH: process.env.PATH ?? "/usr/bin:/bin",
          LAGO_BILLING_METRICS_PORT: String(port),
          LAGO_BILLING_METRICS_HOST: "127.0.0.1",
          WEBHOOK_SERVICE_URL: "http://127.0.0.1:1",
          LAGO_BILLING_SPOOL_PATH: join(tmpdir(), `${db.name}-spool.ndjson`),
          LITELLM_LOCAL_MODEL_COST_MAP: "True",
          PYTHONDONTWRITEBYTECODE: "1",
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    callback.stdout?.on("data", (d: Buffer) => {
      callbackOutput += d.toString();
    });
    callback.stderr?.on("data", (d: Buffer) => {
      callbackOutput += d.toString();
    });
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        const r = await fetch(`http://127.0.0.1:${port}/metrics`);
        if (r.ok) {
          litellm = exposition(await r.text());
          break;
        }
      } catch {
        // not listening yet (importing LiteLLM takes a few seconds)
      }
      if (Date.now() > deadline || callback.exitCode !== null) {
        throw new Error(`the callback's /metrics did not answer:\n${callbackOutput}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }, 90_000);

  afterAll(async () => {
    callback?.kill("SIGKILL");
    await svc?.close();
    await db?.drop();
  });

  const known = (name: string): boolean =>
    name === "up" ||
    recorded.has(name) ||
    exportedAs(name, service) !== undefined ||
    exportedAs(name, litellm) !== undefined;

  it("reads both live expositions", () => {
    expect(service.get("lago_billing_usage_events_received_total")).toBe("counter");
    expect(service.get("process_cpu_seconds_total")).toBe("counter");
    expect(litellm.get("lago_billing_callback_spool_bytes")).toBe("gauge");
  });

  it("holds for every dashboard query", () => {
    const unknown: string[] = [];
    for (const p of panels) {
      for (const t of p.targets ?? []) {
        for (const name of metricNames(t.expr ?? "")) {
          if (!known(name)) unknown.push(`${p.title} (${t.refId}): ${name}`);
        }
      }
    }
    expect(unknown).toEqual([]);
  });

  it("holds for every alert and recording rule expression, and recording rules are defined before use", () => {
    const unknown: string[] = [];
    for (const r of rules) {
      const names = metricNames(r.expr);
      expect(names.length, `${r.alert ?? r.record}: no metric in ${r.expr}`).toBeGreaterThan(0);
      for (const name of names) {
        if (!known(name)) unknown.push(`${r.file} ${r.alert ?? r.record}: ${name}`);
      }
    }
    expect(unknown).toEqual([]);
  });

  it("is documented: the README's Monitoring section names every metric, panel, alert and recording rule", () => {
    const readme = read("README.md");
    const start = readme.indexOf("\n## Monitoring\n");
    expect(start, "README has a ## Monitoring section").toBeGreaterThan(-1);
    const section = readme.slice(start, readme.indexOf("\n## ", start + 5));
    const missing: string[] = [];
    const exported = [...service.keys(), ...litellm.keys()].filter(
      (n) =>
        n.startsWith("lago_billing_") &&
        !n.startsWith("lago_billing_entitlement_") &&
        n !== "lago_billing_lago_webhooks_received_total",
    );
    for (const name of exported) if (!section.includes(`\`${name}\``)) missing.push(`metric ${name}`);
    for (const r of rules) {
      const name = r.alert ?? r.record ?? "";
      if (!section.includes(`\`${name}\``)) missing.push(`${r.alert ? "alert" : "recording rule"} ${name}`);
    }
    for (const p of panels) if (!section.includes(`*${p.title}*`)) missing.push(`panel ${p.title}`);
    expect(missing).toEqual([]);
  });

  it("uses _bucket only on histograms and names only job labels Prometheus scrapes", () => {
    const all = [
      ...panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? "")),
      ...rules.map((r) => r.expr),
    ];
    for (const e of all) {
      for (const name of metricNames(e).filter((n) => n.endsWith("_bucket"))) {
        expect(service.get(name.replace(/_bucket$/, "")), name).toBe("histogram");
      }
      for (const m of e.matchAll(/job=~?"([^"]+)"/g)) {
        for (const job of (m[1] ?? "").split("|"))
          expect(["webhook-service", "litellm-callback"]).toContain(job);
      }
    }
  });
});
