// Deployment files: docker-compose.yml, .env.example, config.yaml, deploy.sh, scripts/backup.sh,
// scripts/restore.sh, scripts/check-deploy.sh. No Docker engine is needed: compose is validated
// statically, deploy.sh runs against a fake `docker` on PATH, backup/restore run in --native mode
// against a local PostgreSQL (skipped when none answers).
import { type SpawnSyncReturns, spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

type Healthcheck = { test?: string[] | string };
type Service = {
  image?: string;
  build?: unknown;
  command?: string[] | string;
  ports?: string[];
  volumes?: string[];
  environment?: Record<string, string | number | boolean | null>;
  healthcheck?: Healthcheck;
  restart?: string;
  init?: boolean;
  depends_on?: Record<string, { condition?: string }>;
  container_name?: string;
  profiles?: string[];
};
type Compose = { services: Record<string, Service>; volumes?: Record<string, unknown> };

const SPEC_VARS = [
  "POSTGRES_PASSWORD",
  "LITELLM_MASTER_KEY",
  "LITELLM_SALT_KEY",
  "UI_USERNAME",
  "UI_PASSWORD",
  "OPENAI_API_KEY",
  "ANTHROPIC_API_KEY",
  "COHERE_API_KEY",
  "LAGO_WEBHOOK_URL",
  "LAGO_API_KEY",
];
const EXTRA_VARS = [
  "AZURE_API_BASE",
  "AZURE_API_KEY",
  "AZURE_API_VERSION",
  "REDIS_PASSWORD",
  "WEBHOOK_DB_PASSWORD",
  "WEBHOOK_SECRET",
];
const GENERATED_SECRETS = [
  "POSTGRES_PASSWORD",
  "LITELLM_MASTER_KEY",
  "LITELLM_SALT_KEY",
  "UI_PASSWORD",
  "WEBHOOK_SECRET",
  "WEBHOOK_DB_PASSWORD",
  "REDIS_PASSWORD",
];
// Settings the compose file sets itself for the webhook service (not user-tunable in .env).
const COMPOSE_OWNED_SETTINGS = [
  "PORT",
  "HOST",
  "DATABASE_URL",
  "NODE_ENV",
  "REDIS_URL",
  "LITELLM_CONFIG_PATH",
];

const readText = (rel: string): string => readFileSync(join(ROOT, rel), "utf8");
const compose = YAML.parse(readText("docker-compose.yml")) as Compose;
const services = compose.services;
const service = (name: string): Service => {
  const s = services[name];
  if (!s) throw new Error(`service ${name} missing from docker-compose.yml`);
  return s;
};

/** A compose interpolation such as ${NAME} or ${NAME:-}, written without a `${` string literal. */
const interp = (expr: string): string => `\${${expr}}`;

function parseEnv(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (m?.[1] !== undefined) out.set(m[1], m[2] ?? "");
  }
  return out;
}

/** Variable names of the README's webhook service settings table (first column). */
function documentedSettings(): string[] {
  const names: string[] = [];
  const readme = readText("README.md");
  const table = readme.slice(
    readme.indexOf("<!-- settings:start -->"),
    readme.indexOf("<!-- settings:end -->"),
  );
  for (const line of table.split("\n")) {
    const cell = /^\|\s*([^|]+?)\s*\|/.exec(line)?.[1] ?? "";
    for (const m of cell.matchAll(/`([A-Z][A-Z0-9_]*)`/g)) if (m[1]) names.push(m[1]);
  }
  return names;
}

function output(r: SpawnSyncReturns<string>): string {
  return `${r.stdout ?? ""}${r.stderr ?? ""}`;
}

describe("scripts/check-deploy.sh", () => {
  it("passes (compose config, shellcheck, nginx -t when installed, structural rules)", () => {
    const r = spawnSync("bash", [join(ROOT, "scripts/check-deploy.sh")], { encoding: "utf8", cwd: ROOT });
    expect(r.status, output(r)).toBe(0);
    expect(r.stdout).toContain("all checks passed");
  });
});

describe("docker-compose.yml", () => {
  it("has exactly the five services, and Prometheus and Grafana only under the monitoring profile", () => {
    const core = Object.entries(services).filter(([, s]) => s.profiles === undefined);
    expect(core.map(([name]) => name).sort()).toEqual([
      "litellm",
      "litellm-lb",
      "postgres",
      "redis",
      "webhook-service",
    ]);
    const optional = Object.entries(services).filter(([, s]) => s.profiles !== undefined);
    expect(optional.map(([name]) => name).sort()).toEqual(["grafana", "prometheus"]);
    for (const [name, s] of optional) expect(s.profiles, name).toEqual(["monitoring"]);
  });

  it("pins every image to an exact version (no rolling tag, no known-bad LiteLLM)", () => {
    for (const [name, s] of Object.entries(services)) {
      if (s.image === undefined) {
        expect(s.build, `${name} has neither image nor build`).toBeDefined();
        continue;
      }
      const ref = s.image.split("@")[0] ?? "";
      const lastSegment = ref.split("/").pop() ?? "";
      expect(lastSegment, `${name}: ${s.image} has no tag`).toContain(":");
      const tag = lastSegment.split(":")[1] ?? "";
      expect(tag, `${name}: ${s.image}`).toMatch(/\d+\.\d+/);
      expect(tag, `${name}: ${s.image}`).not.toMatch(/(^|-)(latest|stable|lts)$/);
      expect(s.image, `${name}: ${s.image}`).not.toContain("$");
    }
    const litellm = service("litellm").image ?? "";
    expect(litellm).toMatch(/^ghcr\.io\/berriai\/litellm:(main-)?v1\.106\.12/);
    for (const bad of ["1.82.7", "1.82.8", "1.107.0"]) expect(litellm).not.toContain(bad);
    expect(service("postgres").image).toMatch(/^postgres:16\.\d+-alpine$/);
    expect(service("redis").image).toMatch(/^redis:7\.4\.\d+-alpine$/);
    expect(service("litellm-lb").image).toMatch(/^nginx:1\.\d+\.\d+-alpine$/);
    expect(service("webhook-service").build).toBeDefined();
  });

  it("gives every service a health check, restart unless-stopped and init, and no container_name", () => {
    for (const [name, s] of Object.entries(services)) {
      expect(s.healthcheck?.test, `${name} healthcheck`).toBeDefined();
      expect(s.restart, `${name} restart`).toBe("unless-stopped");
      expect(s.init, `${name} init`).toBe(true);
      expect(s.container_name, `${name} container_name`).toBeUndefined();
    }
    const test = (name: string) => JSON.stringify(service(name).healthcheck?.test);
    expect(test("postgres")).toContain("pg_isready");
    expect(test("redis")).toContain("redis-cli -a");
    expect(test("litellm")).toContain("/health/liveliness");
    expect(test("litellm")).toContain("urllib");
    expect(test("webhook-service")).toContain("/health/ready");
    expect(test("webhook-service")).toContain("fetch(");
    expect(test("litellm-lb")).toContain("/lb-health");
  });

  it("starts services only after their dependencies are healthy", () => {
    const deps = (name: string) => service(name).depends_on ?? {};
    expect(Object.keys(deps("litellm"))).toEqual(expect.arrayContaining(["postgres", "redis"]));
    expect(Object.keys(deps("webhook-service"))).toEqual(expect.arrayContaining(["postgres", "redis"]));
    expect(Object.keys(deps("litellm-lb"))).toEqual(["litellm"]);
    for (const [name, s] of Object.entries(services)) {
      for (const [dep, cond] of Object.entries(s.depends_on ?? {})) {
        expect(cond.condition, `${name} -> ${dep}`).toBe("service_healthy");
      }
    }
  });

  it("mounts config.yaml, the billing callback and the entitlement hook read-only into LiteLLM", () => {
    const litellm = service("litellm");
    expect(litellm.volumes).toEqual(
      expect.arrayContaining([
        "./config.yaml:/app/config.yaml:ro",
        "./proxy/lago_billing.py:/app/lago_billing.py:ro",
        "./proxy/lago_entitlements.py:/app/lago_entitlements.py:ro",
      ]),
    );
    // The hook reads the webhook service's Redis (REDIS_URL's database) under its prefix.
    expect(litellm.environment?.LAGO_ENTITLEMENTS_REDIS_URL).toBe(
      `redis://:${interp("REDIS_PASSWORD")}@redis:6379/1`,
    );
    expect(litellm.command).toEqual(["--config=/app/config.yaml", "--port", "4000", "--num_workers", "1"]);
    expect(service("webhook-service").volumes).toContain("./config.yaml:/app/config.yaml:ro");
    expect(service("litellm-lb").volumes).toContain("./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro");
    expect(service("postgres").volumes).toEqual(
      expect.arrayContaining([
        "postgres-data:/var/lib/postgresql/data",
        "./deploy/postgres/init.sh:/docker-entrypoint-initdb.d/10-webhook-role.sh:ro",
      ]),
    );
    expect(service("redis").volumes).toContain("redis-data:/data");
    expect(Object.keys(compose.volumes ?? {}).sort()).toEqual([
      "grafana-data",
      "postgres-data",
      "prometheus-data",
      "redis-data",
    ]);
  });

  it("publishes only 4000 (load balancer), 3001 (webhook service) and, with monitoring, 3000 (Grafana)", () => {
    const published: string[] = [];
    for (const [name, s] of Object.entries(services)) {
      for (const p of s.ports ?? []) {
        // "${LB_BIND_ADDRESS:-0.0.0.0}:${LB_PORT:-4000}:4000" with each variable at its default.
        const parts = String(p)
          .replace(/\$\{[A-Z_]+:-([^}]*)\}/g, "$1")
          .split(":");
        published.push(`${name}:${parts.at(-2)}->${parts.at(-1)}`);
      }
    }
    expect(published.sort()).toEqual([
      "grafana:3000->3000",
      "litellm-lb:4000->4000",
      "webhook-service:3001->3001",
    ]);
    for (const name of ["postgres", "redis", "litellm", "prometheus"])
      expect(service(name).ports, name).toBeUndefined();
    expect(service("grafana").ports).toEqual([
      `${interp("GRAFANA_BIND_ADDRESS:-0.0.0.0")}:${interp("GRAFANA_PORT:-3000")}:3000`,
    ]);
  });

  it("runs pinned Prometheus and Grafana with the repository's config and provisioning, read-only", () => {
    const prometheus = service("prometheus");
    const grafana = service("grafana");
    expect(prometheus.image).toMatch(/^prom\/prometheus:v\d+\.\d+\.\d+$/);
    expect(grafana.image).toMatch(/^grafana\/grafana:\d+\.\d+\.\d+$/);
    expect(prometheus.volumes).toEqual([
      "./deploy/prometheus:/etc/prometheus:ro",
      "prometheus-data:/prometheus",
    ]);
    expect(prometheus.command).toEqual(
      expect.arrayContaining([
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
      ]),
    );
    expect(grafana.volumes).toEqual([
      "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro",
      "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro",
      "grafana-data:/var/lib/grafana",
    ]);
    expect(grafana.environment?.GF_SECURITY_ADMIN_PASSWORD).toBe(interp("GRAFANA_ADMIN_PASSWORD"));
    expect(grafana.environment?.GF_SECURITY_ADMIN_USER).toBe(interp("GRAFANA_ADMIN_USER:-admin"));
    expect(String(grafana.environment?.GF_USERS_ALLOW_SIGN_UP)).toBe("false");
    expect(String(grafana.environment?.GF_AUTH_ANONYMOUS_ENABLED)).toBe("false");
    expect(grafana.depends_on).toEqual({ prometheus: { condition: "service_healthy" } });
    expect(JSON.stringify(prometheus.healthcheck?.test)).toContain("/-/ready");
    expect(JSON.stringify(grafana.healthcheck?.test)).toContain("/api/health");
    // The callback's metrics port Prometheus scrapes (deploy/prometheus/prometheus.yml).
    expect(String(service("litellm").environment?.LAGO_BILLING_METRICS_PORT)).toBe("9464");
    // The provisioned paths exist in the repository.
    for (const f of [
      "deploy/prometheus/prometheus.yml",
      "deploy/grafana/provisioning/datasources/prometheus.yml",
      "deploy/grafana/provisioning/dashboards/lago-billing.yml",
      "deploy/grafana/dashboards/lago-billing.json",
    ])
      expect(existsSync(join(ROOT, f)), f).toBe(true);
  });

  it("protects Redis with a password and enables the append-only file", () => {
    const cmd = service("redis").command;
    expect(Array.isArray(cmd)).toBe(true);
    const args = cmd as string[];
    expect(args[args.indexOf("--requirepass") + 1]).toBe(interp("REDIS_PASSWORD"));
    expect(args[args.indexOf("--appendonly") + 1]).toBe("yes");
  });

  it("passes LiteLLM its database, secrets, optional provider keys, Redis and the webhook URL", () => {
    const env = service("litellm").environment ?? {};
    expect(env.DATABASE_URL).toBe(
      `postgresql://litellm:${interp("POSTGRES_PASSWORD")}@postgres:5432/litellm`,
    );
    for (const key of [
      "LITELLM_MASTER_KEY",
      "LITELLM_SALT_KEY",
      "UI_USERNAME",
      "UI_PASSWORD",
      "WEBHOOK_SECRET",
    ]) {
      expect(env[key], key).toBe(interp(key));
    }
    for (const key of [
      "OPENAI_API_KEY",
      "ANTHROPIC_API_KEY",
      "COHERE_API_KEY",
      "AZURE_API_BASE",
      "AZURE_API_KEY",
      "AZURE_API_VERSION",
    ]) {
      expect(env[key], key).toBe(interp(`${key}:-`));
    }
    expect(env.REDIS_HOST).toBe("redis");
    expect(String(env.REDIS_PORT)).toBe("6379");
    expect(env.REDIS_PASSWORD).toBe(interp("REDIS_PASSWORD"));
    expect(env.WEBHOOK_SERVICE_URL).toBe("http://webhook-service:3001");
    expect(String(env.LITELLM_LOCAL_MODEL_COST_MAP)).toBe("True");
    expect(env.LITELLM_MODE).toBe("PRODUCTION");
    expect(env.LITELLM_LOG).toBe("ERROR");
    expect(String(env.STORE_MODEL_IN_DB)).toBe("False");
  });

  it("passes the webhook service its database, Redis, secret and every documented setting", () => {
    const env = service("webhook-service").environment ?? {};
    expect(env.NODE_ENV).toBe("production");
    expect(env.DATABASE_URL).toBe(
      `postgres://webhook:${interp("WEBHOOK_DB_PASSWORD")}@postgres:5432/litellm`,
    );
    expect(env.REDIS_URL).toBe(`redis://:${interp("REDIS_PASSWORD")}@redis:6379/1`);
    expect(env.WEBHOOK_SECRET).toBe(interp("WEBHOOK_SECRET"));
    expect(env.LITELLM_CONFIG_PATH).toBe("/app/config.yaml");
    expect(env.LAGO_WEBHOOK_URL).toBe(interp("LAGO_WEBHOOK_URL:-"));
    expect(env.LAGO_API_KEY).toBe(interp("LAGO_API_KEY:-"));
    for (const name of documentedSettings()) {
      expect(Object.keys(env), `setting ${name} of the README`).toContain(name);
    }
  });
});

describe(".env.example", () => {
  const text = readText(".env.example");
  const env = parseEnv(text);
  const lines = text.split("\n");

  it("lists every variable of the spec, the extra secrets and the documented settings, each with a comment", () => {
    const expected = [
      ...SPEC_VARS,
      ...EXTRA_VARS,
      ...documentedSettings().filter((n) => !COMPOSE_OWNED_SETTINGS.includes(n)),
    ];
    for (const name of expected) {
      expect(env.has(name), `${name} missing from .env.example`).toBe(true);
      const i = lines.findIndex((l) => l.startsWith(`${name}=`));
      expect(lines[i - 1] ?? "", `${name} needs a comment line above it`).toMatch(/^#\s*\S/);
    }
  });

  it("marks the required secrets as change-me placeholders and documents the Lago base URL", () => {
    for (const name of GENERATED_SECRETS) expect(env.get(name), name).toMatch(/change-me/);
    expect(env.get("LITELLM_MASTER_KEY")).toMatch(/^sk-/);
    expect(text).toContain("/api/v1/events/batch");
  });

  it("has the monitoring profile's variables, the Grafana password a placeholder", () => {
    expect(env.get("GRAFANA_ADMIN_PASSWORD")).toMatch(/change-me/);
    expect(env.get("GRAFANA_PORT")).toBe("3000");
    for (const name of ["GRAFANA_ADMIN_USER", "GRAFANA_BIND_ADDRESS", "PROMETHEUS_RETENTION"]) {
      expect(env.has(name), name).toBe(true);
    }
  });
});

describe("config.yaml", () => {
  type Model = {
    model_name: string;
    litellm_params: Record<string, string>;
    model_info: Record<string, string | number>;
  };
  const config = YAML.parse(readText("config.yaml")) as {
    model_list: Model[];
    litellm_settings: Record<string, unknown>;
    router_settings: Record<string, unknown>;
    general_settings: Record<string, unknown>;
  };
  const model = (name: string): Model => {
    const m = config.model_list.find((x) => x.model_name === name);
    if (!m) throw new Error(`model ${name} missing`);
    return m;
  };

  it("has the five chat models and an embedding model with providers, env-resolved keys and per-token prices", () => {
    expect(config.model_list.map((m) => m.model_name).sort()).toEqual(
      [
        "azure-gpt-4o",
        "claude-3-5-sonnet",
        "command-r",
        "gpt-4o",
        "gpt-4o-mini",
        "text-embedding-3-small",
      ].sort(),
    );
    for (const m of config.model_list) {
      const embedding = m.model_name === "text-embedding-3-small";
      expect(m.model_info.mode, m.model_name).toBe(embedding ? "embedding" : "chat");
      expect(m.model_info.input_cost_per_token, m.model_name).toBeGreaterThan(0);
      if (!embedding) expect(m.model_info.output_cost_per_token, m.model_name).toBeGreaterThan(0);
      expect(m.litellm_params.api_key, m.model_name).toMatch(/^os\.environ\/[A-Z_]+_API_KEY$/);
    }
    expect(model("gpt-4o").litellm_params.model).toBe("openai/gpt-4o");
    expect(model("gpt-4o").model_info).toMatchObject({
      input_cost_per_token: 0.000005,
      output_cost_per_token: 0.000015,
    });
    expect(model("gpt-4o-mini").model_info).toMatchObject({
      input_cost_per_token: 0.00000015,
      output_cost_per_token: 0.0000006,
      cache_read_input_token_cost: 0.000000075,
    });
    expect(model("claude-3-5-sonnet").litellm_params.model).toBe("anthropic/claude-3-5-sonnet-20241022");
    expect(model("claude-3-5-sonnet").model_info).toMatchObject({
      input_cost_per_token: 0.000003,
      output_cost_per_token: 0.000015,
      cache_read_input_token_cost: 0.0000003,
      cache_creation_input_token_cost: 0.00000375,
    });
    expect(model("command-r").litellm_params.model).toBe("cohere/command-r-08-2024");
    expect(model("azure-gpt-4o").litellm_params).toMatchObject({
      model: "azure/gpt-4o",
      api_base: "os.environ/AZURE_API_BASE",
      api_key: "os.environ/AZURE_API_KEY",
      api_version: "os.environ/AZURE_API_VERSION",
    });
  });

  it("loads the billing callback and the entitlement hook and uses Redis for the cache and shared rate limits", () => {
    expect(config.litellm_settings.callbacks).toEqual([
      "lago_billing.proxy_handler_instance",
      "lago_entitlements.proxy_handler_instance",
    ]);
    expect(config.litellm_settings.cache).toBe(true);
    expect(config.litellm_settings.drop_params).toBe(true);
    expect(config.litellm_settings.cache_params).toMatchObject({
      type: "redis",
      host: "os.environ/REDIS_HOST",
      port: "os.environ/REDIS_PORT",
      password: "os.environ/REDIS_PASSWORD",
      ttl: 600,
    });
    expect(config.router_settings).toMatchObject({
      redis_host: "os.environ/REDIS_HOST",
      redis_port: "os.environ/REDIS_PORT",
      redis_password: "os.environ/REDIS_PASSWORD",
    });
    expect(config.general_settings).toMatchObject({
      master_key: "os.environ/LITELLM_MASTER_KEY",
      database_url: "os.environ/DATABASE_URL",
    });
  });
});

// ---- deploy.sh against a fake docker -------------------------------------------------------------
// The shim answers what deploy.sh asks: `docker info`, `docker compose version|config|up|ps|logs`
// and `docker inspect` (health). FAKE_UNHEALTHY="svc ..." keeps those services "starting";
// FAKE_DOCKER_LOG records every call.
const FAKE_DOCKER = `#!/usr/bin/env bash
[[ -n "\${FAKE_DOCKER_LOG:-}" ]] && printf '%s\\n' "$*" >>"$FAKE_DOCKER_LOG"
case "$1" in
  info) echo "Server Version: fake"; exit 0 ;;
  inspect)
    id="\${*: -1}"; svc="\${id#id-}"
    if [[ " \${FAKE_UNHEALTHY:-} " == *" $svc "* ]]; then echo starting; else echo healthy; fi
    exit 0 ;;
  compose)
    shift
    while [[ $# -gt 0 ]]; do
      case "$1" in
        -f | --env-file | -p) shift 2 ;;
        version) echo "Docker Compose version v2.99.0-fake"; exit 0 ;;
        config | up) exit 0 ;;
        ps) echo "id-\${*: -1}"; exit 0 ;;
        logs) echo "fake logs of \${*: -1}"; exit 0 ;;
        *) shift ;;
      esac
    done
    echo "fake docker: unsupported compose call" >&2; exit 1 ;;
  *) echo "fake docker: unsupported: $*" >&2; exit 1 ;;
esac
`;

describe("deploy.sh (fake docker)", () => {
  let base = "";
  let shimDir = "";
  let count = 0;

  beforeAll(() => {
    base = mkdtempSync(join(tmpdir(), "deploy-sh-"));
    shimDir = join(base, "bin");
    spawnSync("mkdir", ["-p", shimDir]);
    writeFileSync(join(shimDir, "docker"), FAKE_DOCKER);
    chmodSync(join(shimDir, "docker"), 0o755);
  });
  afterAll(() => {
    if (base) rmSync(base, { recursive: true, force: true });
  });

  const workdir = (): string => {
    const dir = join(base, `w${count++}`);
    spawnSync("mkdir", ["-p", dir]);
    for (const f of ["deploy.sh", ".env.example", "docker-compose.yml"])
      copyFileSync(join(ROOT, f), join(dir, f));
    return dir;
  };
  const run = (
    dir: string,
    args: string[],
    extraEnv: Record<string, string> = {},
  ): SpawnSyncReturns<string> =>
    spawnSync("bash", [join(dir, "deploy.sh"), ...args], {
      cwd: dir,
      encoding: "utf8",
      input: "",
      timeout: 60_000,
      // A minimal environment: values in the developer's shell must not leak into the checks.
      env: {
        PATH: `${shimDir}:${process.env.PATH ?? "/usr/bin:/bin"}`,
        HOME: dir,
        LANG: "C.UTF-8",
        ...extraEnv,
      },
    });
  const completeEnv = (overrides: Record<string, string> = {}): string => {
    const values: Record<string, string> = {
      POSTGRES_PASSWORD: "pg-0123456789abcdef0123",
      LITELLM_MASTER_KEY: "sk-0123456789abcdef0123456789abcdef",
      LITELLM_SALT_KEY: "salt-0123456789abcdef0123456789",
      UI_USERNAME: "admin",
      UI_PASSWORD: "ui-0123456789abcdef0123",
      WEBHOOK_SECRET: "whsec-0123456789abcdef0123456789",
      WEBHOOK_DB_PASSWORD: "wh-0123456789abcdef0123",
      REDIS_PASSWORD: "redis-0123456789abcdef0123",
      OPENAI_API_KEY: "sk-test-openai",
      LAGO_WEBHOOK_URL: "https://api.getlago.com",
      LAGO_API_KEY: "lago-key",
      ...overrides,
    };
    return readText(".env.example")
      .split("\n")
      .map((line) => {
        const key = /^([A-Z_][A-Z0-9_]*)=/.exec(line)?.[1];
        return key !== undefined && key in values ? `${key}=${values[key]}` : line;
      })
      .join("\n");
  };

  it("fails without .env and says to copy .env.example", () => {
    const dir = workdir();
    const r = run(dir, ["--check"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("cp .env.example .env");
    expect(existsSync(join(dir, ".env"))).toBe(false);
  });

  it("fails on placeholders and names every variable to fix", () => {
    const dir = workdir();
    copyFileSync(join(dir, ".env.example"), join(dir, ".env"));
    const r = run(dir, ["--check"]);
    expect(r.status).not.toBe(0);
    for (const name of GENERATED_SECRETS) expect(r.stderr, name).toContain(name);
    expect(r.stderr).toContain("--generate-secrets");
  });

  it("fails when LITELLM_MASTER_KEY does not start with sk-", () => {
    const dir = workdir();
    writeFileSync(join(dir, ".env"), completeEnv({ LITELLM_MASTER_KEY: "master-0123456789abcdef0123" }));
    const r = run(dir, ["--check"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/LITELLM_MASTER_KEY must start with 'sk-'/);
  });

  it("fails when a password would break the database or Redis URL", () => {
    const dir = workdir();
    writeFileSync(join(dir, ".env"), completeEnv({ REDIS_PASSWORD: "p@ss:word/0123456789" }));
    const r = run(dir, ["--check"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("REDIS_PASSWORD");
  });

  it("passes with a complete .env and validates the compose file", () => {
    const dir = workdir();
    const log = join(dir, "docker.log");
    writeFileSync(join(dir, ".env"), completeEnv());
    const r = run(dir, ["--check"], { FAKE_DOCKER_LOG: log });
    expect(r.status, output(r)).toBe(0);
    expect(r.stdout).toContain("preflight passed");
    const calls = readFileSync(log, "utf8");
    expect(calls).toContain("info");
    expect(calls).toMatch(/compose .*config -q/);
    expect(calls).not.toMatch(/compose .*\bup\b/);
  });

  it("warns when Lago or every provider key is missing, without failing", () => {
    const dir = workdir();
    writeFileSync(
      join(dir, ".env"),
      completeEnv({ OPENAI_API_KEY: "", LAGO_WEBHOOK_URL: "", LAGO_API_KEY: "" }),
    );
    const r = run(dir, ["--check"]);
    expect(r.status, output(r)).toBe(0);
    expect(r.stderr).toMatch(/LAGO_API_URL \(or LAGO_WEBHOOK_URL\).*not delivered/i);
    expect(r.stderr).toMatch(/no provider API key/);
    // The service's own name alone is enough.
    writeFileSync(
      join(dir, ".env"),
      completeEnv({ LAGO_WEBHOOK_URL: "", LAGO_API_URL: "https://api.getlago.com", LAGO_API_KEY: "k" }),
    );
    const named = run(dir, ["--check"]);
    expect(named.status, output(named)).toBe(0);
    expect(named.stderr).not.toMatch(/not delivered/);
  });

  it("--generate-secrets fills placeholders, keeps existing values, and is stable on a second run", () => {
    const dir = workdir();
    const example = readText(".env.example").replace(
      /^POSTGRES_PASSWORD=.*$/m,
      "POSTGRES_PASSWORD=keep-this-postgres-password-42",
    );
    writeFileSync(join(dir, ".env"), example);
    const first = run(dir, ["--check", "--generate-secrets"]);
    expect(first.status, output(first)).toBe(0);
    expect(first.stderr).toMatch(/LITELLM_SALT_KEY.*never change it/);

    const text = readFileSync(join(dir, ".env"), "utf8");
    const env = parseEnv(text);
    for (const [name, value] of env) expect(value, name).not.toMatch(/change-me/);
    expect(env.get("POSTGRES_PASSWORD")).toBe("keep-this-postgres-password-42");
    expect(env.get("LITELLM_MASTER_KEY")).toMatch(/^sk-[0-9a-f]{64}$/);
    for (const name of GENERATED_SECRETS.filter((n) => n !== "POSTGRES_PASSWORD")) {
      expect(env.get(name), name).toMatch(/[0-9a-f]{48,}$/);
    }
    expect(env.get("UI_USERNAME")).toBe("admin");
    // Comments and the other settings survive.
    expect(env.get("LAGO_BATCH_SIZE")).toBe("100");
    expect(text).toContain("# Redis password");

    const second = run(dir, ["--check", "--generate-secrets"]);
    expect(second.status, output(second)).toBe(0);
    expect(readFileSync(join(dir, ".env"), "utf8")).toBe(text);
    expect(second.stderr).not.toContain("LITELLM_SALT_KEY was generated");

    const plain = run(dir, ["--check"]);
    expect(plain.status, output(plain)).toBe(0);
  });

  it("--generate-secrets creates .env from .env.example when it is missing", () => {
    const dir = workdir();
    const r = run(dir, ["--check", "--generate-secrets"]);
    expect(r.status, output(r)).toBe(0);
    expect(parseEnv(readFileSync(join(dir, ".env"), "utf8")).get("WEBHOOK_SECRET")).toMatch(/^[0-9a-f]{64}$/);
  });

  it("brings the stack up, waits for health and prints the URLs", () => {
    const dir = workdir();
    const log = join(dir, "docker.log");
    writeFileSync(join(dir, ".env"), completeEnv());
    const r = run(dir, ["--scale", "3", "--timeout", "30"], { FAKE_DOCKER_LOG: log });
    expect(r.status, output(r)).toBe(0);
    expect(r.stdout).toContain("all services healthy");
    expect(r.stdout).toContain("http://localhost:4000");
    expect(r.stdout).toContain("http://localhost:3001/health/metrics");
    const calls = readFileSync(log, "utf8");
    expect(calls).toMatch(/compose up -d --remove-orphans --build --scale litellm=3/);
    for (const svc of ["postgres", "redis", "webhook-service", "litellm", "litellm-lb"]) {
      expect(calls).toContain(`inspect -f`);
      expect(calls).toContain(`id-${svc}`);
    }
  });

  it("--monitoring requires the Grafana password, passes --profile monitoring to compose and waits for both", () => {
    const dir = workdir();
    writeFileSync(join(dir, ".env"), completeEnv());
    // Without --monitoring the placeholder does not matter ("passes with a complete .env" above).
    const missing = run(dir, ["--check", "--monitoring"]);
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toContain("GRAFANA_ADMIN_PASSWORD");

    const log = join(dir, "docker.log");
    writeFileSync(join(dir, ".env"), completeEnv({ GRAFANA_ADMIN_PASSWORD: "grafana-0123456789abcdef" }));
    const r = run(dir, ["--monitoring", "--timeout", "30"], { FAKE_DOCKER_LOG: log });
    expect(r.status, output(r)).toBe(0);
    expect(r.stdout).toContain("http://localhost:3000");
    const calls = readFileSync(log, "utf8");
    expect(calls).toMatch(/compose --profile monitoring config -q/);
    expect(calls).toMatch(/compose --profile monitoring up -d/);
    expect(calls).toContain("id-prometheus");
    expect(calls).toContain("id-grafana");

    const plain = join(dir, "plain.log");
    expect(run(dir, ["--timeout", "30"], { FAKE_DOCKER_LOG: plain }).status).toBe(0);
    expect(readFileSync(plain, "utf8")).not.toContain("monitoring");
    expect(readFileSync(plain, "utf8")).not.toContain("id-grafana");
  });

  it("--generate-secrets --monitoring also generates the Grafana admin password", () => {
    const dir = workdir();
    const r = run(dir, ["--check", "--generate-secrets", "--monitoring"]);
    expect(r.status, output(r)).toBe(0);
    expect(parseEnv(readFileSync(join(dir, ".env"), "utf8")).get("GRAFANA_ADMIN_PASSWORD")).toMatch(
      /^[0-9a-f]{48}$/,
    );
  });

  it("times out on an unhealthy service and prints its last logs", () => {
    const dir = workdir();
    writeFileSync(join(dir, ".env"), completeEnv());
    const r = run(dir, ["--timeout", "4"], { FAKE_UNHEALTHY: "litellm" });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/not healthy after 4s: litellm/);
    expect(r.stderr).toContain("fake logs of litellm");
  });
});

// ---- backup / restore, native mode --------------------------------------------------------------------
const PG_ADMIN_URL = process.env.DEPLOY_TEST_PG_ADMIN_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const pgAvailable =
  spawnSync("pg_dump", ["--version"]).status === 0 &&
  spawnSync("psql", [PG_ADMIN_URL, "-tAc", "select 1"], { encoding: "utf8", timeout: 10_000 }).status === 0;
if (!pgAvailable) console.warn(`backup/restore round trip skipped: no PostgreSQL answers at ${PG_ADMIN_URL}`);

describe.skipIf(!pgAvailable)("scripts/backup.sh and scripts/restore.sh (--native)", () => {
  const dbName = `deploy_backup_test_${process.pid}_${Date.now()}`;
  const dbUrl = PG_ADMIN_URL.replace(/\/[^/?]*(\?.*)?$/, `/${dbName}$1`);
  let outDir = "";
  const psql = (url: string, sql: string): string => {
    const r = spawnSync("psql", [url, "-v", "ON_ERROR_STOP=1", "-tAc", sql], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`psql failed: ${r.stderr}`);
    return r.stdout.trim();
  };
  const script = (name: string, args: string[]): SpawnSyncReturns<string> =>
    spawnSync("bash", [join(ROOT, "scripts", name), ...args], {
      encoding: "utf8",
      input: "",
      env: { ...process.env, DATABASE_URL: dbUrl },
      timeout: 60_000,
    });

  beforeAll(() => {
    outDir = mkdtempSync(join(tmpdir(), "deploy-backup-"));
    psql(PG_ADMIN_URL, `CREATE DATABASE "${dbName}"`);
  });
  afterAll(() => {
    spawnSync("psql", [PG_ADMIN_URL, "-c", `DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`]);
    if (outDir) rmSync(outDir, { recursive: true, force: true });
  });

  it("round-trips a table through a .sql.gz dump", () => {
    psql(
      dbUrl,
      "CREATE TABLE usage_probe (id int PRIMARY KEY, note text); INSERT INTO usage_probe VALUES (1, 'billed')",
    );

    const backup = script("backup.sh", ["--native", "--out", outDir]);
    expect(backup.status, output(backup)).toBe(0);
    const files = readdirSync(outDir).filter((f) => /^litellm-\d{8}T\d{6}Z\.sql\.gz$/.test(f));
    expect(files).toHaveLength(1);
    const file = join(outDir, files[0] ?? "");
    expect(backup.stdout.trim()).toBe(file);

    psql(dbUrl, "DROP TABLE usage_probe");

    const refused = script("restore.sh", ["--native", file]);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toContain("--yes");

    const restore = script("restore.sh", ["--native", "--yes", file]);
    expect(restore.status, output(restore)).toBe(0);
    expect(psql(dbUrl, "SELECT note FROM usage_probe WHERE id = 1")).toBe("billed");

    // Restoring over the existing objects works too (the dump drops what it recreates).
    psql(dbUrl, "INSERT INTO usage_probe VALUES (2, 'after backup')");
    const again = script("restore.sh", ["--native", "--yes", file]);
    expect(again.status, output(again)).toBe(0);
    expect(psql(dbUrl, "SELECT count(*) FROM usage_probe")).toBe("1");
  });

  it("refuses a truncated dump and leaves the database unchanged", () => {
    const broken = join(outDir, "broken.sql.gz");
    writeFileSync(broken, Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0x00]));
    const r = script("restore.sh", ["--native", "--yes", broken]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/not a valid gzip/);
    expect(psql(dbUrl, "SELECT count(*) FROM usage_probe")).toBe("1");
  });
});
