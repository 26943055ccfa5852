// Single sign-on: what the server's OIDC callback hands the `/signin/oidc` page in the URL's fragment (never sent
// to a server), and where to go afterwards.

/** How a sign-in (or link) at the provider ended. */
export type OidcLanding =
  | { kind: 'token'; token: string }
  | { kind: 'linked' }
  | { kind: 'error'; code: string; message: string }
  | { kind: 'none' };

/** Reads `#token=…`, `#linked=1` or `#error=<code>&message=<text>`. */
export function parseLanding(hash: string): OidcLanding {
  const params = new URLSearchParams(hash.startsWith('#') ? hash.slice(1) : hash);
  const token = params.get('token');
  if (token) return { kind: 'token', token };
  if (params.get('linked') === '1') return { kind: 'linked' };
  const code = params.get('error');
  if (code) return { kind: 'error', code, message: params.get('message') || 'Single sign-on failed.' };
  return { kind: 'none' };
}

const NEXT_KEY = 'gradient.oidc.next';

/** Remembers the page to come back to while the browser is at the provider. */
export function rememberNext(next: string | null, storage: Pick<Storage, 'setItem' | 'removeItem'> = sessionStorage) {
  if (next) storage.setItem(NEXT_KEY, next);
  else storage.removeItem(NEXT_KEY);
}

/** The remembered page (once). */
export function takeNext(storage: Pick<Storage, 'getItem' | 'removeItem'> = sessionStorage): string | null {
  const next = storage.getItem(NEXT_KEY);
  storage.removeItem(NEXT_KEY);
  return next;
}

/** The sign-in URL of the server's OIDC flow (a full page navigation: the browser goes to the provider). */
export const OIDC_LOGIN = '/api/v1/auth/oidc/login';
