import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "typebox";
import { fromLiteLLMPayload, type StandardLoggingPayload } from "../../ingest/litellm-payload.ts";
import type { UsageRecord } from "../../ingest/record.ts";
import type { Rejection } from "../../ingest/store.ts";
import { IngestResultSchema } from "../../ingest/usage-api.ts";
import type { Service } from "../../service.ts";
import { countOutcomes } from "./ingest.ts";

/** Parses a single payload, a JSON list, or NDJSON (LiteLLM's generic_api log formats). */
export function parsePayloads(text: string): unknown[] {
  const trimmed = text.trim();
  if (trimmed === "") throw Object.assign(new Error("empty body"), { statusCode: 400 });
  try {
    const v = JSON.parse(trimmed) as unknown;
    return Array.isArray(v) ? v : [v];
  } catch {
    const lines = trimmed.split(/\r?\n/).filter((l) => l.trim() !== "");
    if (lines.length < 2)
      throw Object.assign(new Error("body is not valid JSON or NDJSON"), { statusCode: 400 });
    return lines.map((line, i) => {
      try {
        return JSON.parse(line) as unknown;
      } catch {
        throw Object.assign(new Error(`NDJSON line ${i + 1} is not valid JSON`), { statusCode: 400 });
      }
    });
  }
}

/** What of a rejected payload is kept: identifiers and counts, never messages or responses. */
function trimmed(p: unknown): Record<string, unknown> {
  if (typeof p !== "object" || p === null) return { value: String(p).slice(0, 200) };
  const src = p as Record<string, unknown>;
  const keep = [
    "id",
    "litellm_call_id",
    "trace_id",
    "call_type",
    "status",
    "startTime",
    "endTime",
    "model",
    "model_group",
    "custom_llm_provider",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "response_cost",
    "end_user",
    "cache_hit",
  ];
  const out: Record<string, unknown> = {};
  for (const k of keep) if (k in src) out[k] = src[k];
  const meta = src.metadata as Record<string, unknown> | undefined;
  if (meta && typeof meta === "object") {
    out.metadata = Object.fromEntries(
      [
        "user_api_key_hash",
        "user_api_key_user_id",
        "user_api_key_team_id",
        "user_api_key_org_id",
        "user_api_key_end_user_id",
        "user_api_key_alias",
      ]
        .filter((k) => k in meta)
        .map((k) => [k, meta[k]]),
    );
  }
  return out;
}

/** POST /webhooks/litellm: StandardLoggingPayloads from the billing callback or generic_api. */
export const litellmRoutes: FastifyPluginAsyncTypebox<{ service: Service }> = async (app, { service }) => {
  const { settings, ledger, prices, metrics } = service;
  // Own parsers in this plugin only: the same route takes JSON and NDJSON under either content type.
  app.removeContentTypeParser(["application/json"]);
  const parse = (_req: unknown, body: string, done: (err: Error | null, value?: unknown) => void) => {
    try {
      done(null, parsePayloads(body));
    } catch (err) {
      done(err as Error);
    }
  };
  app.addContentTypeParser(
    ["application/json", "application/x-ndjson", "application/ndjson"],
    { parseAs: "string" },
    parse,
  );

  app.post(
    "/litellm",
    {
      schema: {
        summary: "Store LiteLLM StandardLoggingPayloads (object, JSON list or NDJSON)",
        body: Type.Array(Type.Unknown()),
        response: { 202: IngestResultSchema },
      },
    },
    async (req, reply) => {
      const payloads = req.body as unknown[];
      if (payloads.length > settings.ingest.maxBatch * 10) {
        throw Object.assign(new Error(`at most ${settings.ingest.maxBatch * 10} payloads per request`), {
          statusCode: 413,
        });
      }
      const records: UsageRecord[] = [];
      const rejections: Rejection[] = [];
      const errors: { index: number; path: string; message: string }[] = [];
      payloads.forEach((p, index) => {
        const r = fromLiteLLMPayload(p as StandardLoggingPayload, {
          settings: settings.ingest,
          prices,
          source: "litellm",
        });
        if (r.ok) records.push(r.record);
        else {
          rejections.push({
            source: "litellm",
            requestId: r.requestId,
            reason: r.reason,
            payload: trimmed(p),
          });
          errors.push({ index, path: `/${index}`, message: r.reason });
        }
      });
      if (rejections.length > 0)
        req.log.warn(
          { count: rejections.length, reason: rejections[0]?.reason },
          "LiteLLM payloads rejected (kept in ingest_rejections)",
        );
      const outcomes = await ledger.write(records, rejections);
      for (const o of outcomes) metrics.ingested.inc({ outcome: o, source: "litellm" });
      if (rejections.length)
        metrics.ingested.inc({ outcome: "rejected", source: "litellm" }, rejections.length);
      return reply.code(202).send({
        ...countOutcomes(outcomes),
        not_billable: records.filter((r) => !r.billable).length,
        rejected: rejections.length,
        ...(errors.length ? { errors } : {}),
      });
    },
  );
};
