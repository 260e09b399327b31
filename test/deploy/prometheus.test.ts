// deploy/prometheus/: the compose Prometheus config, the recording rules and the alerts, checked and
// unit-tested with promtool (Debian's `prometheus` package, installed by scripts/ensure-tools.sh), and
// the alerts' conventions: a severity, a summary, a description saying what to run, and a firing and a
// quiet unit test each.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import YAML from "yaml";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const DIR = join(ROOT, "deploy/prometheus");

type Rule = {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
};
type RuleFile = { groups: { name: string; rules: Rule[] }[] };
type UnitTests = {
  rule_files: string[];
  tests: {
    name: string;
    alert_rule_test?: { alertname: string; eval_time: string; exp_alerts: unknown[] }[];
  }[];
};

const load = <T>(file: string): T => YAML.parse(readFileSync(join(DIR, file), "utf8")) as T;
const alerts = load<RuleFile>("alerts.yml")
  .groups.flatMap((g) => g.rules)
  .filter((r) => r.alert);

/** Tools scripts/ensure-tools.sh could not install on this machine (its report file). */
function reportedUnavailable(): string[] {
  const file =
    process.env.ENSURE_TOOLS_REPORT ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "lago-billing/tools-unavailable");
  return existsSync(file) ? readFileSync(file, "utf8").split("\n").filter(Boolean) : [];
}

const hasPromtool = spawnSync("promtool", ["--version"], { encoding: "utf8" }).status === 0;
// Under CI a missing promtool is a failure unless ensure-tools said it could not install it (no apt,
// not root): the rules would otherwise go unchecked without anybody noticing.
const promtoolMustExist = Boolean(process.env.CI) && !reportedUnavailable().includes("promtool");
if (!hasPromtool) {
  console.warn(
    promtoolMustExist
      ? "promtool is missing under CI and scripts/ensure-tools.sh did not report it unavailable"
      : "promtool checks skipped: promtool is not installed (scripts/ensure-tools.sh installs Debian's prometheus)",
  );
}

function promtool(...args: string[]): string {
  const r = spawnSync("promtool", args, { cwd: DIR, encoding: "utf8" });
  const out = `${r.stdout ?? ""}${r.stderr ?? ""}`;
  expect(r.status, out).toBe(0);
  return out;
}

describe.runIf(!hasPromtool && promtoolMustExist)("promtool (required under CI)", () => {
  it("is installed", () => {
    expect(hasPromtool, "run scripts/ensure-tools.sh (apt-get install prometheus)").toBe(true);
  });
});

describe.skipIf(!hasPromtool)("promtool", () => {
  it("accepts prometheus.yml and the rule files it names", () => {
    const out = promtool("check", "config", "prometheus.yml");
    expect(out).toContain("2 rule files found");
  });

  it("accepts the recording rules and the alerts", () => {
    promtool("check", "rules", "rules.yml", "alerts.yml");
  });

  it("passes the unit tests of alerts.test.yml", () => {
    expect(promtool("test", "rules", "alerts.test.yml")).toContain("SUCCESS");
  });
});

describe("prometheus.yml", () => {
  const config = load<{
    rule_files: string[];
    scrape_configs: {
      job_name: string;
      metrics_path?: string;
      dns_sd_configs?: { names: string[]; type: string; port: number }[];
    }[];
  }>("prometheus.yml");
  const job = (name: string) => config.scrape_configs.find((j) => j.job_name === name);

  it("scrapes every webhook-service replica's /health/metrics and every LiteLLM callback through DNS", () => {
    expect(job("webhook-service")).toMatchObject({
      metrics_path: "/health/metrics",
      dns_sd_configs: [{ names: ["webhook-service"], type: "A", port: 3001 }],
    });
    expect(job("litellm-callback")).toMatchObject({
      metrics_path: "/metrics",
      dns_sd_configs: [{ names: ["litellm"], type: "A", port: 9464 }],
    });
    expect(config.rule_files.sort()).toEqual(["alerts.yml", "rules.yml"]);
  });
});

describe("alerts.yml", () => {
  it("gives every alert a severity, a summary and a description that names what to run or look at", () => {
    expect(alerts.length).toBeGreaterThanOrEqual(15);
    for (const a of alerts) {
      expect(["critical", "warning", "info"], `${a.alert} severity`).toContain(a.labels?.severity);
      expect(a.annotations?.summary, `${a.alert} summary`).toMatch(/\S{3,}/);
      // A command (`...`), a panel ("..."), an alert or a setting to check.
      expect(a.annotations?.description, `${a.alert} description`).toMatch(
        /`[^`]+`|"[^"]+"|LagoBilling[A-Z]\w+|[A-Z][A-Z0-9]+_[A-Z0-9_]+/,
      );
    }
  });

  it("covers what the issue lists", () => {
    const exprs = alerts.map((a) => a.expr).join("\n");
    for (const needle of [
      "lago_billing_oldest_pending_age_seconds",
      'lago_billing_sink_state{state="auth_failing"}',
      'lago_billing_sink_state{state="metric_missing"}',
      'lago_billing_sink_state{state="rate_limited"}',
      'lago_billing_lago_events_parked_total{state="failed"}',
      'lago_billing_lago_events_parked_total{state="unbillable"}',
      "lago_billing_drift_unexplained_calls",
      "lago_billing_drift_last_check_timestamp_seconds",
      'status_class="5xx"',
      'up{job="webhook-service"}',
      "absent(",
      "lago_billing_callback_spool_bytes",
      "lago_billing_callback_rejected_bytes",
      "lago_billing_callback_consecutive_failures",
      'up{job="litellm-callback"}',
    ]) {
      expect(exprs, needle).toContain(needle);
    }
  });

  it("has, for every alert, a unit test where it fires and one where it stays quiet", () => {
    const tests = load<UnitTests>("alerts.test.yml");
    expect(tests.rule_files.sort()).toEqual(["alerts.yml", "rules.yml"]);
    const cases = tests.tests.flatMap((t) => t.alert_rule_test ?? []);
    for (const a of alerts) {
      const mine = cases.filter((c) => c.alertname === a.alert);
      expect(
        mine.some((c) => c.exp_alerts.length > 0),
        `${a.alert}: no test where it fires`,
      ).toBe(true);
      expect(
        mine.some((c) => c.exp_alerts.length === 0),
        `${a.alert}: no test where it stays quiet`,
      ).toBe(true);
    }
  });
});
