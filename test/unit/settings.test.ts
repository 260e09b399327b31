import { describe, expect, it } from "vitest";
import { loadSettings, SettingsError } from "../../src/settings.ts";

describe("settings", () => {
  it("has the README's defaults", () => {
    const s = loadSettings({});
    expect(s.port).toBe(3001);
    expect(s.lago.batchSize).toBe(100);
    expect(s.lago.concurrency).toBe(16);
    expect(s.lago.billingMode).toBe("tokens");
    expect(s.lago.subscriptionMapping).toBe("same");
    expect(s.ingest.maxBatch).toBe(1000);
    expect(s.ingest.attribution).toEqual(["end_user", "user_id", "team_id"]);
    expect(s.ingest.billCacheHits).toBe(false);
    expect(s.workerEnabled).toBe(true);
  });

  it("refuses production without a secret and names the variable", () => {
    expect(() => loadSettings({ NODE_ENV: "production" })).toThrow(/WEBHOOK_SECRET/);
    expect(() => loadSettings({ NODE_ENV: "production", WEBHOOK_SECRET: "short" })).toThrow(SettingsError);
    expect(loadSettings({ NODE_ENV: "production", WEBHOOK_SECRET: "a".repeat(32) }).production).toBe(true);
  });

  it("says what is wrong with a value", () => {
    expect(() => loadSettings({ LAGO_BATCH_SIZE: "101" })).toThrow(/LAGO_BATCH_SIZE.*1 to 100/);
    expect(() => loadSettings({ PORT: "http" })).toThrow(/PORT/);
    expect(() => loadSettings({ WORKER_ENABLED: "perhaps" })).toThrow(/true or false/);
    expect(() => loadSettings({ CUSTOMER_ATTRIBUTION: "end_user,email" })).toThrow(/email/);
    expect(() => loadSettings({ LAGO_SUBSCRIPTION_TEMPLATE: "sub_x" })).toThrow(/\{customer_id\}/);
    expect(() => loadSettings({ LAGO_WEBHOOK_URL: "api.getlago.com" })).toThrow(/http/);
  });

  it("accepts the Lago URL with or without /api/v1", () => {
    expect(loadSettings({ LAGO_WEBHOOK_URL: "https://api.getlago.com/api/v1/" }).lago.url).toBe(
      "https://api.getlago.com",
    );
    expect(loadSettings({ LAGO_WEBHOOK_URL: "http://lago:3000" }).lago.url).toBe("http://lago:3000");
  });
});

describe("Lago URL names", () => {
  it("takes LAGO_API_URL, and the specification's LAGO_WEBHOOK_URL as an alias", () => {
    expect(loadSettings({ LAGO_WEBHOOK_URL: "http://a:3000" }).lago.url).toBe("http://a:3000");
    expect(loadSettings({ LAGO_API_URL: "http://b:3000", LAGO_WEBHOOK_URL: "http://a:3000" }).lago.url).toBe(
      "http://b:3000",
    );
    expect(() => loadSettings({ LAGO_API_URL: "lago:3000" })).toThrow(/LAGO_API_URL/);
  });
});
