// Builds web/app into web/dist/app (the reference client) and web/console into
// web/dist/console (the security team's console, which the gateway builds into its
// binary): each a page, its style, and one script bundling it with the SDK (client-js,
// built first). No CDN: everything a page loads comes from here.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';

for (const [page, script, files] of [
  ['app', 'app.js', ['index.html', 'app.css']],
  ['console', 'console.js', ['index.html', 'console.css']],
]) {
  const out = `dist/${page}`;
  mkdirSync(out, { recursive: true });
  await build({
    entryPoints: [`${page}/main.js`],
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2022'],
    outfile: `${out}/${script}`,
    legalComments: 'none',
    logLevel: 'warning',
  });
  for (const file of files) copyFileSync(`${page}/${file}`, `${out}/${file}`);
  console.log(`built ${out}/`);
}
