import { once } from "node:events";
import { createConnection, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP relay to PostgreSQL that a test can cut and restore, to take the database "down" the way a
 * stopped server is down: open connections are killed and new ones are refused (ECONNREFUSED),
 * because nothing listens on the port until restore().
 */
export class TcpProxy {
  readonly port: number;
  readonly #targetHost: string;
  readonly #targetPort: number;
  readonly #sockets = new Set<Socket>();
  #server: Server | null = null;
  #dropping = false;

  private constructor(port: number, targetHost: string, targetPort: number) {
    this.port = port;
    this.#targetHost = targetHost;
    this.#targetPort = targetPort;
  }

  static async start(targetHost: string, targetPort: number): Promise<TcpProxy> {
    const probe = createServer();
    probe.listen(0, "127.0.0.1");
    await once(probe, "listening");
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const proxy = new TcpProxy(port, targetHost, targetPort);
    await proxy.restore();
    return proxy;
  }

  get isUp(): boolean {
    return this.#server !== null;
  }

  /** Stops listening (new connections are refused) and kills open ones. */
  async cut(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
    if (server) await new Promise((r) => server.close(r));
  }

  /**
   * Keeps listening but kills open connections and drops every new one right after accepting it,
   * like a TCP load balancer in front of a dead PostgreSQL.
   */
  async drop(): Promise<void> {
    await this.restore();
    this.#dropping = true;
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
  }

  /** Listens again on the same port and relays again. */
  async restore(): Promise<void> {
    this.#dropping = false;
    if (this.#server) return;
    const server = createServer((client) => {
      if (this.#dropping) {
        client.destroy();
        return;
      }
      const upstream = createConnection(this.#targetPort, this.#targetHost);
      this.#sockets.add(client).add(upstream);
      client.pipe(upstream).pipe(client);
      const close = () => {
        client.destroy();
        upstream.destroy();
        this.#sockets.delete(client);
        this.#sockets.delete(upstream);
      };
      client.on("error", close).on("close", close);
      upstream.on("error", close).on("close", close);
    });
    server.listen(this.port, "127.0.0.1");
    await once(server, "listening");
    this.#server = server;
  }

  async close(): Promise<void> {
    await this.cut();
  }
}
