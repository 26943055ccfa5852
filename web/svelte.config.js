import adapter from '@sveltejs/adapter-static';
import { vitePreprocess } from '@sveltejs/vite-plugin-svelte';

/** @type {import('@sveltejs/kit').Config} */
export default {
  preprocess: vitePreprocess(),
  kit: {
    // A single-page app: every deep link is answered with index.html by gradient-server.
    adapter: adapter({ pages: 'dist', assets: 'dist', fallback: 'index.html', strict: true }),
    appDir: 'assets',
  },
};
