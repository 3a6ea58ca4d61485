/**
 * The public types of `@webcontainer/api@1.6.1-internal.1`, by the same names and shapes, so
 * code written against WebContainer type-checks unchanged against this package
 * (test/types checks both directions against the original declarations).
 */

export type BufferEncoding =
  | 'ascii'
  | 'utf8'
  | 'utf-8'
  | 'utf16le'
  | 'ucs2'
  | 'ucs-2'
  | 'base64'
  | 'base64url'
  | 'latin1'
  | 'binary'
  | 'hex';

export interface BootOptions {
  /** Cross-origin isolation of previews; the server's `preview_coep` decides (see docs). */
  coep?: 'require-corp' | 'credentialless' | 'none';
  /** Only `project` is honoured: the workspace is always `/home/project`. */
  workdirName?: string;
  forwardPreviewErrors?: boolean | 'exceptions-only';
  experimentalNode?: boolean;
}

export type PortListener = (port: number, type: 'open' | 'close', url: string) => void;
export type ServerReadyListener = (port: number, url: string) => void;
export type PreviewMessageListener = (message: PreviewMessage) => void;
export type ErrorListener = (error: { message: string }) => void;
export type OpenListener = (text: string) => void;
export type CodeListener = (type: CodeEventType, event: CodeEvent) => void;
export type CodeEventType = 'open' | 'diff';
export interface CodeEvent {
  files: CodeEventFile[];
}
export interface CodeEventFile {
  filepath: string;
  line?: number;
  column?: number;
}
export type Unsubscribe = () => void;

export interface SpawnOptions {
  /** Relative to the workdir (or absolute). */
  cwd?: string;
  env?: Record<string, string | number | boolean>;
  /** Default true; false: `output` never yields. */
  output?: boolean;
  terminal?: { cols: number; rows: number };
  /** The process runs on a PTY, which merges its streams: these stay empty (see README). */
  stdout?: boolean;
  stderr?: boolean;
}

export interface WebContainerProcess {
  exit: Promise<number>;
  input: WritableStream<string>;
  output: ReadableStream<string>;
  stdout: ReadableStream<string>;
  stderr: ReadableStream<string>;
  kill(): void;
  resize(dimensions: { cols: number; rows: number }): void;
}

export interface DirEnt<T> {
  name: T;
  isFile(): boolean;
  isDirectory(): boolean;
}

export interface IFSWatcher {
  close(): void;
}

export type FSWatchOptions =
  | { encoding?: BufferEncoding | null; persistent?: boolean; recursive?: boolean }
  | string
  | null;
export type FSWatchCallback = (event: 'rename' | 'change', filename: string | Uint8Array) => void;

export interface FileSystemAPI {
  readdir(
    path: string,
    options: 'buffer' | { encoding: 'buffer'; withFileTypes?: false },
  ): Promise<Uint8Array[]>;
  readdir(
    path: string,
    options?: { encoding?: BufferEncoding | null; withFileTypes?: false } | BufferEncoding | null,
  ): Promise<string[]>;
  readdir(
    path: string,
    options: { encoding: 'buffer'; withFileTypes: true },
  ): Promise<DirEnt<Uint8Array>[]>;
  readdir(
    path: string,
    options: { encoding?: BufferEncoding | null; withFileTypes: true },
  ): Promise<DirEnt<string>[]>;
  readFile(path: string, encoding?: null): Promise<Uint8Array>;
  readFile(path: string, encoding: BufferEncoding): Promise<string>;
  writeFile(
    path: string,
    data: string | Uint8Array,
    options?: string | { encoding?: string | null } | null,
  ): Promise<void>;
  mkdir(path: string, options?: { recursive?: false }): Promise<void>;
  mkdir(path: string, options: { recursive: true }): Promise<string>;
  rm(path: string, options?: { force?: boolean; recursive?: boolean }): Promise<void>;
  rename(oldPath: string, newPath: string): Promise<void>;
  watch(filename: string, options?: FSWatchOptions, listener?: FSWatchCallback): IFSWatcher;
  watch(filename: string, listener?: FSWatchCallback): IFSWatcher;
}

export interface FileSystemTree {
  [name: string]: DirectoryNode | FileNode | SymlinkNode;
}
export interface DirectoryNode {
  directory: FileSystemTree;
}
export interface FileNode {
  file: {
    contents: string | Uint8Array;
  };
}
export interface SymlinkNode {
  file: {
    symlink: string;
  };
}

export interface ExportOptions {
  format?: 'json' | 'binary' | 'zip';
  includes?: string[];
  excludes?: string[];
}

export interface PreviewScriptOptions {
  type?: 'module' | 'importmap';
  defer?: boolean;
  async?: boolean;
}

export enum PreviewMessageType {
  UncaughtException = 'PREVIEW_UNCAUGHT_EXCEPTION',
  UnhandledRejection = 'PREVIEW_UNHANDLED_REJECTION',
  ConsoleError = 'PREVIEW_CONSOLE_ERROR',
}

export interface BasePreviewMessage {
  previewId: string;
  port: number;
  pathname: string;
  search: string;
  hash: string;
}
export interface UncaughtExceptionMessage {
  type: PreviewMessageType.UncaughtException;
  message: string;
  stack: string | undefined;
}
export interface UnhandledRejectionMessage {
  type: PreviewMessageType.UnhandledRejection;
  message: string;
  stack: string | undefined;
}
export interface ConsoleErrorMessage {
  type: PreviewMessageType.ConsoleError;
  args: any[];
  stack: string;
}
export type PreviewMessage = (
  | UncaughtExceptionMessage
  | UnhandledRejectionMessage
  | ConsoleErrorMessage
) &
  BasePreviewMessage;

// -- auth (kept for type parity; cloudcontainer authenticates with a token, see README) ------

export interface AuthInitOptions {
  editorOrigin?: string;
  clientId: string;
  scope: string;
}
export interface AuthFailedError {
  status: 'auth-failed';
  error: string;
  description: string;
}
export interface AuthAPI {
  init(options: AuthInitOptions): { status: 'need-auth' | 'authorized' } | AuthFailedError;
  startAuthFlow(options?: { popup?: boolean }): void;
  loggedIn(): Promise<void>;
  logout(options?: { ignoreRevokeError?: boolean }): Promise<void>;
  on(event: 'logged-out', listener: () => void): Unsubscribe;
  on(
    event: 'auth-failed',
    listener: (reason: { error: string; description: string }) => void,
  ): Unsubscribe;
}

// -- the `internal` surface of the -internal build --------------------------------------------

export interface WatchPathsOptions {
  path?: string;
  include?: string[];
  exclude?: string[];
  gitignore?: string[];
  includeContent?: boolean;
  ignoreHiddenFiles?: boolean;
  ignoreHiddenFolders?: boolean;
  excludeLargeContent?: number;
}

export interface PathWatcherEvent {
  type: 'change' | 'add_file' | 'remove_file' | 'add_dir' | 'remove_dir' | 'update_directory';
  path: string;
  mtime: number;
  buffer?: Uint8Array;
  ino: number;
}

export interface TextSearchOptions {
  folders: string[];
  includes: string[];
  excludes: string[];
  homeDir?: string;
  gitignore: boolean;
  requireGit: boolean;
  globalIgnoreFiles: boolean;
  isRegex: boolean;
  caseSensitive: boolean;
  isWordMatch: boolean;
  ignoreSymlinks: boolean;
  resultLimit: number;
}
export interface TextSearchRange {
  startLineNumber: number;
  endLineNumber: number;
  startColumn: number;
  endColumn: number;
}
export interface TextSearchPreview {
  text: string;
  matches: TextSearchRange[];
}
export interface TextSearchMatch {
  preview: TextSearchPreview;
  ranges: TextSearchRange[];
}
export type TextSearchOnProgressCallback = (path: string, matches: TextSearchMatch[]) => void;

export interface FileSearchOptions {
  homeDir?: string;
  includes: string[];
  excludes: string[];
  globalIgnoreFiles: boolean;
  gitignore: boolean;
  requireGit: boolean;
  ignoreSymlinks: boolean;
  resultLimit: number;
}

export interface GlobOptions {
  includes?: string[];
  excludes?: string[];
  homeDir?: string;
  useGitignore?: boolean;
  requireGit?: boolean;
  useGlobalGitignore?: boolean;
  ignoreSymlinks?: boolean;
  includeTimestamps?: boolean;
  external?: boolean;
  format?: 'pretty' | 'binary' | 'json' | 'zip';
}

export interface ProxyOptions {
  address: string;
  domains: string[];
}

export interface PreviewScriptStorageAPI {
  get(): Promise<any>;
  set(value: any): void;
  on(event: 'change', listener: (data: unknown) => void): Unsubscribe;
}
export interface PreviewScriptAPI {
  storage: PreviewScriptStorageAPI;
  broadcast(message: any): void;
  on(event: 'message', listener: (data: unknown) => void): Unsubscribe;
}

// -- the in-preview `webcontainer` global of WebContainer's preview scripts (types only) ------

export interface PreviewScriptEvent {
  readonly data: any;
}
export type PreviewScriptEventListener = (event: PreviewScriptEvent) => void;
export interface StorageAPIWithinPreview {
  get(): any;
  set(value: any): Promise<void>;
  addEventListener(eventType: 'change', listener: PreviewScriptEventListener): void;
  removeEventListener(eventType: 'change', listener: PreviewScriptEventListener): void;
}
export interface WebContainerAPIWithinPreview {
  addEventListener(eventType: 'message', listener: PreviewScriptEventListener): void;
  removeEventListener(eventType: 'message', listener: PreviewScriptEventListener): void;
  postMessage(data: any, transferables?: Transferable[]): void;
  readonly storage: StorageAPIWithinPreview;
}
