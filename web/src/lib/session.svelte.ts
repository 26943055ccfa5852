// Who is signed in: the session token from `POST /auth/basic/login`, kept in localStorage.
import { goto } from '$app/navigation';

const KEY = 'gradient.token';

function stored(): string | null {
  try {
    return localStorage.getItem(KEY);
  } catch {
    return null;
  }
}

class Session {
  token = $state<string | null>(typeof localStorage === 'undefined' ? null : stored());

  signIn(token: string) {
    this.token = token;
    localStorage.setItem(KEY, token);
  }

  signOut() {
    this.token = null;
    localStorage.removeItem(KEY);
  }

  /** A 401: forget the token and go to the sign-in page, which comes back here afterwards. */
  expired() {
    this.signOut();
    if (location.pathname.startsWith('/signin')) return;
    const back = location.pathname + location.search;
    void goto(`/signin?next=${encodeURIComponent(back)}`);
  }
}

export const session = new Session();

/** Where to go after signing in: only a path of this site (no open redirect). */
export function safeNext(next: string | null): string {
  return next && next.startsWith('/') && !next.startsWith('//') ? next : '/';
}
