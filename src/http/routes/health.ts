import type { FastifyPluginAsync } from "fastify";
import { refreshMonitoringGauges } from "../../operations/monitoring.ts";
import { backlog } from "../../operations/stats.ts";
import type { Service } from "../../service.ts";

async function databaseUp(service: Service): Promise<boolean> {
  try {
    await Promise.race([
      service.sql`SELECT 1 FROM schema_migrations LIMIT 1`,
      new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), 2000)),
    ]);
    return true;
  } catch {
    return false;
  }
}

/** /health, /health/live, /health/ready, /health/metrics — unauthenticated, cheap. */
export const healthRoutes: FastifyPluginAsync<{ service: Service }> = async (app, { service }) => {
  app.get("/health", async (_req, reply) => {
    const db = await databaseUp(service);
    const sink = service.sink.snapshot();
    const lago = service.lago === null ? "not_configured" : sink.state;
    return reply.code(db ? 200 : 503).send({
      status: db ? (lago === "ok" || lago === "not_configured" ? "ok" : "degraded") : "down",
      database: db ? "up" : "down",
      lago,
      ...(sink.error ? { lago_error: sink.error } : {}),
      worker: service.worker !== null,
    });
  });

  app.get("/health/live", async () => ({ status: "ok" }));

  app.get("/health/ready", async (_req, reply) => {
    const db = await databaseUp(service);
    return reply
      .code(db ? 200 : 503)
      .send({ status: db ? "ready" : "not ready", database: db ? "up" : "down" });
  });

  app.get("/health/metrics", async (_req, reply) => {
    const m = service.metrics;
    const monitoring = refreshMonitoringGauges(service);
    try {
      const b = await backlog(service.sql);
      m.backlog.set({ state: "pending" }, b.pending);
      m.backlog.set({ state: "failed" }, b.failed);
      m.backlog.set({ state: "unbillable" }, b.unbillable);
      m.oldestPendingSeconds.set(b.oldestPendingSeconds);
    } catch {
      // The database being down shows in /health; metrics still answer with what the process knows.
    }
    const state = service.lago === null ? "not_configured" : service.sink.snapshot().state;
    for (const s of [
      "ok",
      "rate_limited",
      "auth_failing",
      "backing_off",
      "metric_missing",
      "not_configured",
    ]) {
      m.sinkState.set({ state: s }, s === state ? 1 : 0);
    }
    const last = service.worker?.lastSuccess;
    if (last) m.lastSuccess.set(last.getTime() / 1000);
    await monitoring;
    return reply.header("content-type", m.registry.contentType).send(await m.registry.metrics());
  });
};
