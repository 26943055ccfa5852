import { sveltekit } from '@sveltejs/kit/vite';
import { defineConfig } from 'vitest/config';

// `npm run dev` proxies the API to a gradient-server on :3000 (GRADIENT_DEV_API to point elsewhere).
const api = process.env.GRADIENT_DEV_API ?? 'http://127.0.0.1:3000';

export default defineConfig({
  plugins: [sveltekit()],
  server: { proxy: { '/api': api, '/cache': api } },
  test: { include: ['src/**/*.test.ts'] },
});
