/**
 * `@cloudcontainer/api`: `@webcontainer/api`'s API, backed by containers on a cloudcontainer
 * server. Import it instead of `@webcontainer/api`; `boot()` finds the server as `configure`
 * explains.
 */

import type { AuthAPI, AuthFailedError, AuthInitOptions } from './types.js';
import { configure } from './server.js';

export * from './types.js';
export * from './utils.js';
export { WebContainer } from './webcontainer.js';
export { WebContainerInternal } from './internal.js';
export { configure, ServerError, type ServerOptions, type TokenSource } from './server.js';
export { CallError, ContainerGoneError } from './link.js';
export {
  onConnectionChange,
  type ConnectionChange,
  type ConnectionListener,
  type ConnectionState,
} from './connection.js';
export {
  Cloud,
  Sandbox,
  type CommandResult,
  type ContainerInfo,
  type Entry,
  type HistoryEntry,
  type Preview,
  type Project,
  type RunOptions,
  type Snapshot,
} from './cloud.js';

/** WebContainer's API key: here it is the cloudcontainer API key (`cc_…`) boot uses. */
export function configureAPIKey(key: string): void {
  configure({ token: key });
}

/** WebContainer's StackBlitz sign-in. A cloudcontainer server authenticates with its own token
 * (see `configure`), so this reports `authorized` and never starts a flow. */
export const auth: AuthAPI = {
  init(_options: AuthInitOptions): { status: 'need-auth' | 'authorized' } | AuthFailedError {
    return { status: 'authorized' };
  },
  startAuthFlow(): void {},
  async loggedIn(): Promise<void> {},
  async logout(): Promise<void> {},
  on(): () => void {
    return () => undefined;
  },
};
