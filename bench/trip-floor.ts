/**
 * The floor for bench/trip.ts: the same trips per call as the service makes, with nothing else.
 *
 *   node bench/trip-floor.ts server   (PORT, DATABASE_URL, LAGO_URL)
 *   node bench/trip-floor.ts lago     (PORT)
 *
 * `server` takes a POST, stores its body in one INSERT (a commit, like the ledger's), answers 202,
 * POSTs the body to `lago` and marks the row settled in one UPDATE (a second commit, like the
 * worker's settle). No parsing, validation, mapping, metrics or logs. `lago` answers every POST with
 * `{}`. Its CPU per call is what one call that travels alone costs on this machine whatever the code.
 */
import { createServer, type IncomingMessage } from "node:http";
import postgres from "postgres";
import { Pool } from "undici";

const port = Number(process.env.PORT);

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString();
}

if (process.argv[2] === "lago") {
  createServer((req, res) => {
    void readBody(req).then(() => res.writeHead(200, { "content-type": "application/json" }).end("{}"));
  }).listen(port, "127.0.0.1");
} else {
  const sql = postgres(process.env.DATABASE_URL as string, { max: 4, onnotice: () => {} });
  await sql`CREATE TABLE IF NOT EXISTS floor_calls (
    id bigserial PRIMARY KEY, body jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(), settled_at timestamptz)`;
  const lago = new Pool(process.env.LAGO_URL as string, { connections: 4 });
  createServer((req, res) => {
    if (req.method !== "POST") {
      res.writeHead(200).end("ok");
      return;
    }
    void (async () => {
      const body = await readBody(req);
      const [row] = await sql`INSERT INTO floor_calls (body) VALUES (${body}::jsonb) RETURNING id`;
      res.writeHead(202).end();
      const sent = await lago.request({
        method: "POST",
        path: "/api/v1/events/batch",
        headers: { "content-type": "application/json" },
        body,
      });
      await sent.body.text();
      await sql`UPDATE floor_calls SET settled_at = now() WHERE id = ${row?.id as string}`;
    })().catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
  }).listen(port, "127.0.0.1");
}
