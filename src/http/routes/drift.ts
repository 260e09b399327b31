import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "typebox";
import { drift } from "../../completeness/drift.ts";
import type { Service } from "../../service.ts";

/** A report reads SpendLogs call by call: keep one request to a bounded range. */
const MAX_RANGE_DAYS = 92;

const DriftQuery = Type.Object(
  {
    since: Type.Optional(
      Type.String({ description: "start (ISO 8601), inclusive; default: 24 hours before `until`" }),
    ),
    until: Type.Optional(Type.String({ description: "end (ISO 8601), exclusive; default: now" })),
  },
  { additionalProperties: false },
);

function parseTime(v: string | undefined, field: string): Date | undefined {
  if (v === undefined) return undefined;
  const d = new Date(v);
  if (Number.isNaN(d.getTime()))
    throw Object.assign(new Error(`${field} is not a valid ISO 8601 time`), { statusCode: 422 });
  return d;
}

/** GET /webhooks/drift: SpendLogs vs ledger vs Lago, per customer and day. */
export const driftRoutes: FastifyPluginAsyncTypebox<{ service: Service }> = async (app, { service }) => {
  app.get(
    "/drift",
    {
      schema: {
        summary:
          "Calls, tokens and cost per customer and UTC day in SpendLogs, in the ledger and delivered to " +
          "Lago, with every difference listed and flagged explained or unexplained",
        querystring: DriftQuery,
      },
    },
    async (req) => {
      const until = parseTime(req.query.until, "until") ?? new Date();
      const since = parseTime(req.query.since, "since") ?? new Date(until.getTime() - 86_400_000);
      if (!(since < until)) {
        throw Object.assign(new Error("since must be before until"), { statusCode: 422 });
      }
      if (until.getTime() - since.getTime() > MAX_RANGE_DAYS * 86_400_000) {
        throw Object.assign(
          new Error(`the range is longer than ${MAX_RANGE_DAYS} days: ask for it in parts (or use the CLI)`),
          { statusCode: 422 },
        );
      }
      return drift(service, { since, until });
    },
  );
};
