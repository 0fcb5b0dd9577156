// Admin HTTP routes: /metrics, /healthz, /readyz and the JSON API (/api/pools, /api/clients, /api/servers), with an
// optional bearer token for the API. Responses carry names, states and numbers only: never a secret.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { AdminView } from './view.ts';

export interface HttpRequestLike {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
}

export interface HttpResponseLike {
  status: number;
  contentType: string;
  body: string;
}

export interface HttpDeps {
  view: AdminView;
  metrics(): Promise<{ contentType: string; body: string }>;
  /** admin.api_token, read per request (a reload may change it). */
  token(): string | undefined;
}

const json = (status: number, value: unknown): HttpResponseLike => ({
  status,
  contentType: 'application/json',
  body: `${JSON.stringify(value)}\n`,
});

const iso = (ms: number) => new Date(ms).toISOString();

function tokenOk(header: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(.+)$/i.exec(header ?? '');
  if (!m) return false;
  const a = createHash('sha256').update(m[1]!.trim()).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}

export function httpRoutes(deps: HttpDeps): (req: HttpRequestLike) => Promise<HttpResponseLike> {
  const { view } = deps;
  const api: Record<string, () => unknown> = {
    '/api/pools': () => view.pools(),
    '/api/clients': () =>
      view
        .clients()
        .map((c) => ({ ...c, connect_time: iso(c.connect_time), server_id: c.server_id ?? null })),
    '/api/servers': () =>
      view.servers().map((s) => ({
        ...s,
        connect_time: iso(s.connect_time),
        request_time: iso(s.request_time),
        client_id: s.client_id ?? null,
      })),
  };
  return async (req) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(405, { error: 'method not allowed' });
    switch (req.path) {
      case '/metrics': {
        const m = await deps.metrics();
        return { status: 200, contentType: m.contentType, body: m.body };
      }
      case '/healthz':
        return json(200, { status: 'ok' });
      case '/readyz': {
        const r = await view.ready();
        return json(r.ready ? 200 : 503, { status: r.ready ? 'ready' : 'unready', databases: r.databases });
      }
    }
    const route = api[req.path];
    if (!route) return json(404, { error: 'not found' });
    const token = deps.token();
    if (token !== undefined && !tokenOk(req.headers.authorization, token)) {
      return json(401, { error: 'a valid bearer token is required' });
    }
    return json(200, route());
  };
}
