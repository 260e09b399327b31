import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { Outcome } from "../../ingest/store.ts";
import {
  type FieldError,
  fromUsageEvent,
  IngestResultSchema,
  semanticErrors,
  UsageBatchSchema,
  UsageEventSchema,
  ValidationErrorSchema,
} from "../../ingest/usage-api.ts";
import type { Service } from "../../service.ts";
import { toFieldErrors, unprocessable } from "../errors.ts";

export function countOutcomes(outcomes: Outcome[]) {
  let accepted = 0;
  let duplicates = 0;
  let conflicts = 0;
  for (const o of outcomes) {
    if (o === "accepted") accepted++;
    else if (o === "duplicate") duplicates++;
    else conflicts++;
  }
  return { accepted, duplicates, conflicts };
}

const responses = {
  202: IngestResultSchema,
  422: ValidationErrorSchema,
};

/** POST /webhooks/usage and /webhooks/usage/batch: the README's usage event format. */
export const ingestRoutes: FastifyPluginAsyncTypebox<{ service: Service }> = async (app, { service }) => {
  const { settings, ledger, metrics } = service;

  app.post(
    "/usage",
    {
      attachValidation: true,
      schema: { summary: "Store one usage event", body: UsageEventSchema, response: responses },
    },
    async (req, reply) => {
      if (req.validationError) {
        metrics.ingested.inc({ outcome: "rejected", source: "api" });
        return reply.code(422).send(unprocessable(toFieldErrors(req.validationError.validation ?? [])));
      }
      const errors = semanticErrors(req.body, settings.ingest, "");
      if (errors.length > 0) {
        metrics.ingested.inc({ outcome: "rejected", source: "api" });
        return reply.code(422).send(unprocessable(errors));
      }
      const outcomes = await ledger.write([fromUsageEvent(req.body)]);
      const counts = countOutcomes(outcomes);
      for (const o of outcomes) metrics.ingested.inc({ outcome: o, source: "api" });
      return reply.code(202).send(counts);
    },
  );

  app.post(
    "/usage/batch",
    {
      attachValidation: true,
      schema: {
        summary: "Store a batch of usage events (all or nothing)",
        body: UsageBatchSchema,
        response: responses,
      },
    },
    async (req, reply) => {
      const errors: FieldError[] = req.validationError
        ? toFieldErrors(req.validationError.validation ?? [])
        : [];
      const events = Array.isArray((req.body as { events?: unknown } | null)?.events) ? req.body.events : [];
      if (events.length > settings.ingest.maxBatch) {
        return reply.code(422).send(
          unprocessable([
            {
              path: "/events",
              message: `at most ${settings.ingest.maxBatch} events per batch (INGEST_MAX_BATCH)`,
            },
          ]),
        );
      }
      // Events that passed the schema also get the semantic checks, so one answer lists every problem.
      const badIndexes = new Set(errors.map((e) => e.index));
      if (!errors.some((e) => e.index === undefined)) {
        events.forEach((e, index) => {
          if (badIndexes.has(index)) return;
          for (const err of semanticErrors(e, settings.ingest, `/events/${index}`))
            errors.push({ index, ...err });
        });
      }
      if (errors.length > 0) {
        metrics.ingested.inc({ outcome: "rejected", source: "api" }, Math.max(1, events.length));
        return reply.code(422).send(unprocessable(errors));
      }
      const outcomes = await ledger.write(events.map(fromUsageEvent));
      for (const o of outcomes) metrics.ingested.inc({ outcome: o, source: "api" });
      return reply.code(202).send(countOutcomes(outcomes));
    },
  );
};
