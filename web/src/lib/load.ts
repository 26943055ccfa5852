// Small helpers for pages: load something into a state with its error sentence.
import { sentence } from './api/client';

export interface Loaded<T> {
  value: T | null;
  error: string | null;
  loading: boolean;
}

/** Runs `load`, putting its value or its error sentence into `into`. */
export async function fill<T>(into: Loaded<T>, load: () => Promise<T>): Promise<void> {
  into.loading = true;
  try {
    into.value = await load();
    into.error = null;
  } catch (e) {
    into.error = sentence(e);
  } finally {
    into.loading = false;
  }
}

export function loaded<T>(): Loaded<T> {
  return { value: null, error: null, loading: true };
}
