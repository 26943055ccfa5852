// The API client, generated from openapi/gradient.json (`npm run gen` writes schema.d.ts): every call is typed
// by the committed OpenAPI document, so an API change the UI does not follow fails `npm run check`.
import createClient, { type Middleware } from 'openapi-fetch';
import type { paths, components } from './schema';
import { session } from '../session.svelte';

export type Schemas = components['schemas'];

/** A failure answered by the API's envelope `{"error": true, "message", "code"}`, or a network failure. */
export class ApiFailure extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly status: number,
  ) {
    super(message);
  }
}

const auth: Middleware = {
  onRequest({ request }) {
    if (session.token) request.headers.set('Authorization', `Bearer ${session.token}`);
    return request;
  },
  onResponse({ response, request }) {
    // A 401 anywhere but the sign-in itself: the session is over; sign in again and come back here.
    if (response.status === 401 && !request.url.includes('/auth/basic/')) session.expired();
    return response;
  },
};

export const api = createClient<paths>({ baseUrl: '/api/v1' });
api.use(auth);

type Answer<D> = { data?: D; error?: unknown; response: Response };

/** The envelope's `message` of a successful answer; throws an [`ApiFailure`] carrying the API's sentence. */
export async function unwrap<D extends { message?: unknown }>(call: Promise<Answer<D>>): Promise<D['message']> {
  let answer: Answer<D>;
  try {
    answer = await call;
  } catch (e) {
    throw new ApiFailure(`The server could not be reached (${String(e)}).`, 'network', 0);
  }
  if (answer.data !== undefined && answer.response.ok) return answer.data.message;
  const body = answer.error as { message?: unknown; code?: unknown } | undefined;
  const message = typeof body?.message === 'string' ? body.message : `The server answered ${answer.response.status}.`;
  throw new ApiFailure(message, typeof body?.code === 'string' ? body.code : 'unknown', answer.response.status);
}

/** The sentence to show for any thrown value. */
export function sentence(e: unknown): string {
  if (e instanceof ApiFailure) return capitalise(e.message);
  if (e instanceof Error) return e.message;
  return String(e);
}

function capitalise(s: string): string {
  const t = s.charAt(0).toUpperCase() + s.slice(1);
  return /[.!?]$/.test(t) ? t : `${t}.`;
}

/** A GET of a text body (logs) with the session's token. */
export async function fetchText(path: string): Promise<string> {
  const headers: Record<string, string> = {};
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  const r = await fetch(`/api/v1${path}`, { headers });
  if (r.status === 401) session.expired();
  if (!r.ok) {
    const body = (await r.json().catch(() => ({}))) as { message?: string; code?: string };
    throw new ApiFailure(body.message ?? `The server answered ${r.status}.`, body.code ?? 'unknown', r.status);
  }
  return r.text();
}

/** The paths of the document whose answer is a Server-Sent Events stream. */
export type StreamPath = {
  [P in keyof paths]: paths[P] extends { get: { responses: { 200: { content: { 'text/event-stream': unknown } } } } }
    ? P
    : never;
}[keyof paths];

/**
 * The URL of a live stream of the document, its `{placeholders}` filled: a stream the API no longer has fails
 * the type check like any other call.
 */
export function streamUrl(path: StreamPath, params: Record<string, string>, query?: Record<string, string>): string {
  const filled = path.replace(/\{(\w+)\}/g, (_, k: string) => encodeURIComponent(params[k] ?? ''));
  const q = query ? `?${new URLSearchParams(query).toString()}` : '';
  return `/api/v1${filled}${q}`;
}
