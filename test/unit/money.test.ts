import { describe, expect, it } from "vitest";
import { fromUnits, mulInt, toUnits } from "../../src/decimal.ts";
import { loadConfiguredModels, PriceBook, priceCall } from "../../src/pricing.ts";

describe("decimal money", () => {
  it("is exact where floats are not", () => {
    expect(0.1 + 0.2).not.toBe(0.3);
    expect(fromUnits(toUnits("0.1") + toUnits("0.2"))).toBe("0.3");
    expect(fromUnits(mulInt(0.000005, 1000))).toBe("0.005");
    expect(fromUnits(toUnits(5e-7))).toBe("0.0000005");
    expect(fromUnits(toUnits(1.5e-10))).toBe("0.00000000015");
    expect(fromUnits(toUnits("-2.50"))).toBe("-2.5");
    expect(fromUnits(toUnits("0.123456789"), 4)).toBe("0.1235");
    expect(() => toUnits("abc")).toThrow();
  });
});

describe("pricing from config.yaml", () => {
  const models = loadConfiguredModels("config.yaml");

  it("reads every model with its provider and per-token prices", () => {
    const names = models.map((m) => m.name);
    for (const n of ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "command-r"]) expect(names).toContain(n);
    expect(models.find((m) => m.name === "gpt-4o")).toMatchObject({
      provider: "openai",
      price: { input: "0.000005", output: "0.000015" },
    });
  });

  it("prices input, output and cached tokens to the cent-fraction", () => {
    const book = new PriceBook(models);
    const gpt = book.get("gpt-4o");
    expect(gpt).toBeDefined();
    // 100 input + 150 output at 5e-6 / 1.5e-5: the README's example cost.
    expect(priceCall(required(gpt), { input: 100, output: 150, cached: 0, cacheWrite: 0 })).toBe("0.00275");
    const mini = book.get("gpt-4o-mini");
    // 1000 prompt tokens of which 800 cached at 7.5e-8, 200 at 1.5e-7, 100 output at 6e-7.
    expect(priceCall(required(mini), { input: 1000, output: 100, cached: 800, cacheWrite: 0 })).toBe(
      "0.00015",
    );
    const claude = book.get("claude-3-5-sonnet");
    expect(priceCall(required(claude), { input: 1000, output: 0, cached: 0, cacheWrite: 1000 })).toBe(
      "0.00375",
    );
    expect(book.get("no-such-model")).toBeUndefined();
  });

  it("returns no models for a missing file", () => {
    expect(loadConfiguredModels("/nonexistent/config.yaml")).toEqual([]);
  });
});

function required<T>(v: T | undefined): T {
  if (v === undefined) throw new Error("model missing from the price book");
  return v;
}
