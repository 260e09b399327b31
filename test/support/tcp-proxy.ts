import { once } from "node:events";
import { createConnection, createServer, type Server, type Socket } from "node:net";

/** A TCP relay to PostgreSQL that a test can cut and restore, to take the database "down". */
export class TcpProxy {
  readonly port: number;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #up = true;

  private constructor(server: Server, port: number) {
    this.#server = server;
    this.port = port;
  }

  static async start(targetHost: string, targetPort: number): Promise<TcpProxy> {
    let proxy: TcpProxy | undefined;
    const server = createServer((client) => {
      if (!proxy?.isUp) {
        client.destroy();
        return;
      }
      const upstream = createConnection(targetPort, targetHost);
      proxy.#sockets.add(client).add(upstream);
      client.pipe(upstream).pipe(client);
      const close = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on("error", close).on("close", close);
      upstream.on("error", close).on("close", close);
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    proxy = new TcpProxy(server, (server.address() as { port: number }).port);
    return proxy;
  }

  get isUp(): boolean {
    return this.#up;
  }

  /** Refuses new connections and kills open ones. */
  cut(): void {
    this.#up = false;
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
  }

  restore(): void {
    this.#up = true;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.#server.close(r));
  }
}
