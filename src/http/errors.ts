import type { FastifyError, FastifyInstance } from "fastify";
import { isDatabaseUnavailable } from "../db/pool.ts";
import type { FieldError } from "../ingest/usage-api.ts";

/** Turns ajv's instancePath ("/events/3/tokens_input") into a field error with the batch index. */
export function toFieldErrors(
  validation: { instancePath?: string; message?: string; params?: Record<string, unknown> }[],
): FieldError[] {
  return validation.map((v) => {
    let path = v.instancePath || "/";
    const extra = v.params?.additionalProperty ?? v.params?.missingProperty;
    if (typeof extra === "string") path = `${path === "/" ? "" : path}/${extra}`;
    const m = /^\/events\/(\d+)(\/|$)/.exec(path);
    const message =
      v.params?.additionalProperty !== undefined ? "is not a known field" : (v.message ?? "is invalid");
    return m ? { index: Number(m[1]), path, message } : { path, message };
  });
}

/** Sends 422 with per-field (and per-index) reasons. */
export function unprocessable(errors: FieldError[]) {
  return {
    statusCode: 422,
    error: "Unprocessable Entity",
    message: `${errors.length} invalid field(s); nothing was stored`,
    errors,
  };
}

/**
 * Validation errors become 422 with field paths; an unreachable database 503 with Retry-After (the
 * sender must retry); client errors pass through; anything else is logged and masked as 500.
 */
export function installErrorHandler(app: FastifyInstance, onDatabaseError: () => void = () => {}): void {
  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err.validation) {
      return reply.code(422).send(unprocessable(toFieldErrors(err.validation)));
    }
    if (isDatabaseUnavailable(err) || (err as { severity?: string }).severity !== undefined)
      onDatabaseError();
    if (isDatabaseUnavailable(err)) {
      req.log.warn({ err: err.message }, "database unavailable: answering 503");
      return reply.code(503).header("retry-after", "5").send({
        statusCode: 503,
        error: "Service Unavailable",
        message: "database unavailable; nothing was stored, retry later",
      });
    }
    const status = err.statusCode ?? 500;
    if (status < 500) {
      return reply
        .code(status)
        .send({ statusCode: status, error: err.code ?? "Bad Request", message: err.message });
    }
    req.log.error({ err }, "unhandled error");
    return reply.code(500).send({
      statusCode: 500,
      error: "Internal Server Error",
      message: "internal error (see the service log)",
    });
  });
}
