// bolt.diy's own files that use WebContainer type-check against this package exactly as they
// do against @webcontainer/api@1.6.1-internal.1. bolt's other dependencies are not installed
// (they are `any`), so both compilations report the same unrelated errors: the test is that
// they report nothing else. A third compilation against an empty WebContainer class shows the
// check sees the API at all.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { extractBolt } from './bolt/bundle.mjs';

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), '..');
// Every file of bolt.diy that imports from @webcontainer/api (../shared/WC-API.md §3).
const FILES = [
  'utils/shell.ts',
  'lib/stores/files.ts',
  'lib/stores/terminal.ts',
  'lib/stores/previews.ts',
  'lib/runtime/action-runner.ts',
  'lib/hooks/useGit.ts',
  'lib/webcontainer/index.ts',
  'lib/webcontainer/auth.client.ts',
  'components/workbench/Search.tsx',
];

function compile(work, name, api) {
  const bolt = join(extractBolt(), 'bolt.diy');
  const config = join(work, `tsconfig.${name}.json`);
  writeFileSync(
    config,
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'ESNext',
        moduleResolution: 'Bundler',
        lib: ['ES2022', 'DOM', 'DOM.Iterable'],
        types: [],
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        jsx: 'preserve',
        allowImportingTsExtensions: true,
        baseUrl: bolt,
        paths: { '@webcontainer/api': [api], '~/*': ['app/*'] },
      },
      files: [join(work, 'ambient.d.ts'), ...FILES.map((file) => join(bolt, 'app', file))],
    }),
  );
  const tsc = spawnSync('npx', ['tsc', '-p', config, '--pretty', 'false'], { cwd: PACKAGE, encoding: 'utf8' });
  return tsc.stdout
    .split('\n')
    .filter((line) => /error TS\d+/.test(line))
    .map((line) => line.replace(/^.*bolt\.diy\//, ''))
    .sort();
}

test("bolt.diy's files type-check against this package as against the original", () => {
  const work = join(extractBolt(), 'types');
  mkdirSync(work, { recursive: true });
  // bolt's npm dependencies are not installed: each is `any`.
  writeFileSync(join(work, 'ambient.d.ts'), "declare module '*';\n");
  writeFileSync(join(work, 'empty.d.ts'), 'export declare class WebContainer {}\n');
  const original = compile(work, 'original', join(PACKAGE, 'node_modules/@webcontainer/api/dist/index.d.ts'));
  const ours = compile(work, 'ours', join(PACKAGE, 'dist/index.d.ts'));
  const empty = compile(work, 'empty', join(work, 'empty.d.ts'));
  assert.deepEqual(ours, original);
  assert.ok(empty.length > original.length + 10, 'an empty WebContainer must break bolt');
});
