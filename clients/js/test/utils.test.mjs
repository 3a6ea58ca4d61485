// The utils (`@cloudcontainer/api/utils` as `@webcontainer/api/utils`) against the original's
// runtime values, and the package's types against the original's declarations (tsc).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as original from '@webcontainer/api/utils';

import * as ours from '../dist/utils.js';
import { auth, configureAPIKey, WebContainer } from '../dist/index.js';

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), '..');

test('PreviewMessageType and isPreviewMessage match the original', () => {
  assert.deepEqual({ ...ours.PreviewMessageType }, { ...original.PreviewMessageType });
  const samples = [
    { type: 'PREVIEW_UNCAUGHT_EXCEPTION', message: 'x' },
    { type: 'PREVIEW_CONSOLE_ERROR', args: [] },
    { type: 'SOMETHING_ELSE' },
    null,
    'PREVIEW_UNCAUGHT_EXCEPTION',
    {},
  ];
  for (const sample of samples) {
    assert.equal(ours.isPreviewMessage(sample), original.isPreviewMessage(sample), JSON.stringify(sample));
  }
});

test('auth reports authorized; configureAPIKey sets the key boot uses', async () => {
  assert.deepEqual(auth.init({ clientId: 'x', scope: '' }), { status: 'authorized' });
  configureAPIKey('cc_not-a-real-key');
  await assert.rejects(WebContainer.boot(), { name: 'ServerError', status: 401, code: 'invalid_api_key' });
});

test('the declarations match @webcontainer/api@1.6.1-internal.1 (tsc)', () => {
  execFileSync('npx', ['tsc', '-p', 'test/types/tsconfig.json'], { cwd: PACKAGE, stdio: 'pipe' });
});
