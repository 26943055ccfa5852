// A single-page app: rendered in the browser only, served as index.html for every deep link.
export const ssr = false;
export const prerender = false;
