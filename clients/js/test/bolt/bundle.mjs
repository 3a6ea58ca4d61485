// bolt.diy's own code, bundled with esbuild from its pinned source archive (never copied into
// this repository), with `@webcontainer/api` aliased to this package. Used by bolt.test.mjs.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';

const HERE = dirname(fileURLToPath(import.meta.url));
const PACKAGE = resolve(HERE, '../..');
const REPOSITORY = resolve(PACKAGE, '../..');

/** bolt.diy's source archive: $BOLT_DIY_ARCHIVE, else ../shared/thirdparty beside the
 * repository (where the project keeps it), else /work/shared/thirdparty. */
export function boltArchive() {
  const candidates = [
    process.env.BOLT_DIY_ARCHIVE,
    resolve(REPOSITORY, '../shared/thirdparty/bolt.diy.tar.gz'),
    '/work/shared/thirdparty/bolt.diy.tar.gz',
  ].filter(Boolean);
  const found = candidates.find((path) => existsSync(path));
  if (!found) {
    throw new Error(`bolt.diy's source archive is not at any of: ${candidates.join(', ')}`);
  }
  return found;
}

/** The archive extracted once (a folder named by its digest); returns that folder. */
export function extractBolt() {
  const archive = boltArchive();
  const digest = createHash('sha256').update(readFileSync(archive)).digest('hex').slice(0, 16);
  const root = join(tmpdir(), `cloudcontainer-bolt-${digest}`);
  if (!existsSync(join(root, 'bolt.diy', 'app'))) {
    mkdirSync(root, { recursive: true });
    execFileSync('tar', ['-xzf', archive, '-C', root]);
  }
  return root;
}

// Modules bolt's LLM plumbing imports through its constants; nothing here runs them.
const UNUSED = /^(@ai-sdk\/|@openrouter\/|ollama-ai-provider)/;

const ENTRY = `
export { BoltShell, newBoltShellProcess, cleanTerminalOutput } from '~/utils/shell';
export { ActionRunner } from '~/lib/runtime/action-runner';
export { StreamingMessageParser } from '~/lib/runtime/message-parser';
export { EnhancedStreamingMessageParser } from '~/lib/runtime/enhanced-message-parser';
export { FilesStore } from '~/lib/stores/files';
`;

/** Extract the archive once (by its digest) and bundle: `{modules, source}`, the bundle's
 * exports and the extracted source tree (for bolt's own fixtures). */
export async function boltModules() {
  const root = extractBolt();
  const app = join(root, 'bolt.diy', 'app');
  const entry = join(root, 'entry.ts');
  writeFileSync(entry, ENTRY);
  const outfile = join(root, `bolt-${Date.now()}.mjs`);
  await build({
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile,
    logLevel: 'error',
    nodePaths: [join(PACKAGE, 'node_modules')],
    alias: { '~': app, '@webcontainer/api': join(PACKAGE, 'dist/index.js') },
    define: { 'import.meta.env': '{"DEV":false,"PROD":true,"MODE":"test","SSR":false}' },
    plugins: [
      {
        name: 'unused-llm-providers',
        setup(esbuild) {
          esbuild.onResolve({ filter: UNUSED }, (args) => ({ path: args.path, namespace: 'unused' }));
          esbuild.onLoad({ filter: /.*/, namespace: 'unused' }, () => ({
            contents: 'module.exports = new Proxy({}, { get: () => () => ({}) });',
            loader: 'js',
          }));
        },
      },
    ],
  });
  return { modules: await import(outfile), source: join(root, 'bolt.diy') };
}
