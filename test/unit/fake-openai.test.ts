import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FakeOpenAI, parseUsageDirective } from "../support/fake-openai.ts";

type Obj = Record<string, unknown>;

describe("FakeOpenAI", () => {
  let fake: FakeOpenAI;

  beforeAll(async () => {
    fake = await FakeOpenAI.start();
  });
  afterAll(async () => {
    await fake.close();
  });

  const post = (path: string, body: unknown): Promise<Response> =>
    fetch(`${fake.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer sk-fake" },
      body: JSON.stringify(body),
    });

  async function sse(res: Response): Promise<Obj[]> {
    const text = await res.text();
    const datas = text
      .split("\n\n")
      .filter((b) => b.startsWith("data: "))
      .map((b) => b.slice("data: ".length));
    expect(datas.at(-1)).toBe("[DONE]");
    return datas.slice(0, -1).map((d) => JSON.parse(d) as Obj);
  }

  it("parses the usage directive with defaults", () => {
    expect(parseUsageDirective("hello")).toEqual({ prompt: 12, completion: 8, cached: 0, reasoning: 0 });
    expect(parseUsageDirective("x usage:prompt=120,completion=30,cached=100,reasoning=5 y")).toEqual({
      prompt: 120,
      completion: 30,
      cached: 100,
      reasoning: 5,
    });
    expect(parseUsageDirective("usage:completion=3")).toEqual({
      prompt: 12,
      completion: 3,
      cached: 0,
      reasoning: 0,
    });
  });

  it("answers a chat completion with default usage", async () => {
    const res = await post("/chat/completions", {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Obj;
    expect(body).toMatchObject({
      object: "chat.completion",
      model: "gpt-4o-mini",
      choices: [{ index: 0, message: { role: "assistant" }, finish_reason: "stop" }],
      usage: {
        prompt_tokens: 12,
        completion_tokens: 8,
        total_tokens: 20,
        prompt_tokens_details: { cached_tokens: 0 },
        completion_tokens_details: { reasoning_tokens: 0 },
      },
    });
    expect(String(body.id)).toMatch(/^chatcmpl-[0-9a-f-]{36}$/);
    expect(typeof body.created).toBe("number");
  });

  it("lets the request dictate usage", async () => {
    const res = await post("/chat/completions", {
      model: "gpt-4o",
      messages: [
        { role: "system", content: "be brief" },
        {
          role: "user",
          content: [{ type: "text", text: "usage:prompt=120,completion=30,cached=100,reasoning=5" }],
        },
      ],
    });
    const body = (await res.json()) as { usage: Obj };
    expect(body.usage).toEqual({
      prompt_tokens: 120,
      completion_tokens: 30,
      total_tokens: 150,
      prompt_tokens_details: { cached_tokens: 100, audio_tokens: 0 },
      completion_tokens_details: {
        reasoning_tokens: 5,
        audio_tokens: 0,
        accepted_prediction_tokens: 0,
        rejected_prediction_tokens: 0,
      },
    });
    expect(fake.requests.count).toBeGreaterThan(0);
    expect((fake.lastBody as Obj).model).toBe("gpt-4o");
    expect(fake.requests.byPath["/v1/chat/completions"]).toBeGreaterThan(0);
  });

  it("streams with a final usage chunk only when include_usage is true", async () => {
    const withUsage = await sse(
      await post("/chat/completions", {
        model: "gpt-4o-mini",
        stream: true,
        stream_options: { include_usage: true },
        messages: [{ role: "user", content: "usage:prompt=50,completion=7" }],
      }),
    );
    const last = withUsage.at(-1) as Obj;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ prompt_tokens: 50, completion_tokens: 7, total_tokens: 57 });
    expect(withUsage.every((c) => c.object === "chat.completion.chunk")).toBe(true);
    const text = withUsage
      .flatMap((c) => c.choices as Array<{ delta: { content?: string } }>)
      .map((ch) => ch.delta.content ?? "")
      .join("");
    expect(text.length).toBeGreaterThan(0);
    expect(withUsage.filter((c) => c.usage).length).toBe(1);

    const without = await sse(
      await post("/chat/completions", {
        model: "gpt-4o-mini",
        stream: true,
        messages: [{ role: "user", content: "usage:prompt=50,completion=7" }],
      }),
    );
    expect(without.some((c) => "usage" in c)).toBe(false);
    const finish = without.at(-1) as { choices: Array<{ finish_reason: string }> };
    expect(finish.choices[0]?.finish_reason).toBe("stop");
  });

  it("answers embeddings with 5 prompt tokens per input", async () => {
    const res = await post("/embeddings", { model: "text-embedding-3-small", input: ["a", "b", "c"] });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { data: Array<{ index: number; embedding: number[] }>; usage: Obj };
    expect(body.data).toHaveLength(3);
    expect(body.data[2]?.index).toBe(2);
    expect(body.data[0]?.embedding).toHaveLength(8);
    expect(body.usage).toEqual({ prompt_tokens: 15, total_tokens: 15 });

    const single = (await (await post("/embeddings", { model: "m", input: "x" })).json()) as { usage: Obj };
    expect(single.usage.prompt_tokens).toBe(5);

    const b64 = (await (
      await post("/embeddings", { model: "m", input: "x", encoding_format: "base64" })
    ).json()) as {
      data: Array<{ embedding: string }>;
    };
    expect(Buffer.from(b64.data[0]?.embedding ?? "", "base64").length).toBe(32);
  });

  it("lists models", async () => {
    const body = (await (await fetch(`${fake.url}/models`)).json()) as { object: string; data: Obj[] };
    expect(body.object).toBe("list");
    expect(body.data.length).toBeGreaterThan(0);
  });

  it("fails per request with fail:429 / fail:500", async () => {
    const r429 = await post("/chat/completions", {
      model: "m",
      messages: [{ role: "user", content: "fail:429" }],
    });
    expect(r429.status).toBe(429);
    expect(((await r429.json()) as { error: Obj }).error.code).toBe("rate_limit_exceeded");
    const r500 = await post("/chat/completions", {
      model: "m",
      stream: true,
      messages: [{ role: "user", content: "please fail:500" }],
    });
    expect(r500.status).toBe(500);
    expect(await r500.json()).toMatchObject({ error: { message: "upstream failure", type: "server_error" } });
  });

  it("error mode answers 500 to everything until switched back", async () => {
    fake.setMode("error");
    const chat = await post("/chat/completions", { model: "m", messages: [{ role: "user", content: "hi" }] });
    expect(chat.status).toBe(500);
    expect(await chat.json()).toMatchObject({ error: { message: "upstream failure", type: "server_error" } });
    expect((await post("/embeddings", { model: "m", input: "x" })).status).toBe(500);
    fake.setMode("ok");
    expect(
      (await post("/chat/completions", { model: "m", messages: [{ role: "user", content: "hi" }] })).status,
    ).toBe(200);
  });

  it("applies latencyMs", async () => {
    fake.latencyMs = 100;
    const t0 = performance.now();
    await (await post("/chat/completions", { model: "m", messages: [] })).json();
    expect(performance.now() - t0).toBeGreaterThanOrEqual(90);
    fake.latencyMs = 0;
  });
});

describe("FakeOpenAI standalone", () => {
  it("prints its url and serves requests", async () => {
    const file = fileURLToPath(new URL("../support/fake-openai.ts", import.meta.url));
    const child = spawn(process.execPath, [file, "--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
    try {
      const line = await new Promise<string>((resolve, reject) => {
        const rl = createInterface({ input: child.stdout });
        rl.once("line", resolve);
        child.once("exit", (code) => reject(new Error(`exited ${code}`)));
      });
      const { url } = JSON.parse(line) as { url: string };
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);
      const res = await fetch(`${url}/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "m",
          messages: [{ role: "user", content: "usage:prompt=3,completion=4" }],
        }),
      });
      expect(((await res.json()) as { usage: Obj }).usage).toMatchObject({ total_tokens: 7 });
      const ctl = await fetch(`${url.replace(/\/v1$/, "")}/__control`, {
        method: "POST",
        body: JSON.stringify({ mode: "error" }),
      });
      expect(ctl.status).toBe(200);
      const failed = await fetch(`${url}/embeddings`, {
        method: "POST",
        body: JSON.stringify({ model: "m", input: "x" }),
      });
      expect(failed.status).toBe(500);
    } finally {
      child.kill("SIGTERM");
    }
  });
});
