/** `@webcontainer/api/utils`: preview messages and reloading a preview iframe. */

import { PreviewMessageType, type PreviewMessage } from './types.js';

export { PreviewMessageType };

const TYPES = new Set<string>(Object.values(PreviewMessageType));

export function isPreviewMessage(data: any): data is PreviewMessage {
  return data !== null && typeof data === 'object' && TYPES.has(data.type);
}

/** Reload a preview iframe. WebContainer asks the page to reload itself and, when nothing
 * answers within `hardRefreshTimeout` ms, assigns `src` again; previews here are ordinary
 * pages, so the second is what happens (after the same wait). */
export async function reloadPreview(
  preview: HTMLIFrameElement,
  hardRefreshTimeout = 200,
): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, hardRefreshTimeout));
  const src = preview.src;
  preview.src = src;
}
