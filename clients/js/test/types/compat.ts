// The API surface is WebContainer's, checked by the compiler against the declarations of the
// build bolt.diy pins (@webcontainer/api@1.6.1-internal.1, a dev dependency): every runtime
// export and type name exists here, and each type is assignable both ways. Enums are nominal
// in TypeScript: types holding PreviewMessageType are compared without their `type`, and the
// enum by its member names (test/utils.test.mjs compares the values at run time).
import type * as ours from '../../dist/index.js';
import type * as theirs from '@webcontainer/api';

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
declare function check<T extends true>(): void;
/** A class's public side (private members make two declarations incomparable). */
type Public<T> = { [K in keyof T]: T[K] };
/** A preview message without its (nominal) enum-typed `type`. */
type Plain<T> = T extends unknown ? Omit<T, 'type'> : never;

// Runtime exports.
check<Same<Exclude<keyof typeof theirs, keyof typeof ours>, never>>();

// The class: what code written for WebContainer calls exists with compatible types, and back.
declare const instance: ours.WebContainer;
export const asTheirs: Public<theirs.WebContainer> = instance;
declare const original: Public<theirs.WebContainer>;
export const asOurs: Omit<Public<ours.WebContainer>, 'containerId' | 'internal'> & {
  internal: Public<ours.WebContainerInternal>;
} = original;
check<Same<Parameters<typeof ours.WebContainer.boot>, Parameters<typeof theirs.WebContainer.boot>>>();
check<Same<Public<ours.WebContainerInternal>, Public<theirs.WebContainerInternal>>>();

// Every exported type name, both ways.
check<Same<ours.DirectoryNode, theirs.DirectoryNode>>();
check<Same<ours.FileNode, theirs.FileNode>>();
check<Same<ours.SymlinkNode, theirs.SymlinkNode>>();
check<Same<ours.FileSystemTree, theirs.FileSystemTree>>();
check<Same<ours.AuthAPI, theirs.AuthAPI>>();
check<Same<ours.AuthInitOptions, theirs.AuthInitOptions>>();
check<Same<ours.AuthFailedError, theirs.AuthFailedError>>();
check<Same<ours.Unsubscribe, theirs.Unsubscribe>>();
check<Same<Plain<ours.PreviewMessage>, Plain<theirs.PreviewMessage>>>();
check<Same<ours.PreviewScriptOptions, theirs.PreviewScriptOptions>>();
check<Same<ours.BasePreviewMessage, theirs.BasePreviewMessage>>();
check<Same<Plain<ours.ConsoleErrorMessage>, Plain<theirs.ConsoleErrorMessage>>>();
check<Same<Plain<ours.UncaughtExceptionMessage>, Plain<theirs.UncaughtExceptionMessage>>>();
check<Same<Plain<ours.UnhandledRejectionMessage>, Plain<theirs.UnhandledRejectionMessage>>>();
check<Same<ours.ExportOptions, theirs.ExportOptions>>();
check<Same<ours.CodeEventType, theirs.CodeEventType>>();
check<Same<ours.CodeEvent, theirs.CodeEvent>>();
check<Same<ours.CodeEventFile, theirs.CodeEventFile>>();
check<Same<ours.WebContainerAPIWithinPreview, theirs.WebContainerAPIWithinPreview>>();
check<Same<ours.PreviewScriptEvent, theirs.PreviewScriptEvent>>();
check<Same<ours.PreviewScriptEventListener, theirs.PreviewScriptEventListener>>();
check<Same<ours.StorageAPIWithinPreview, theirs.StorageAPIWithinPreview>>();
check<Same<ours.FileSearchOptions, theirs.FileSearchOptions>>();
check<Same<ours.TextSearchOptions, theirs.TextSearchOptions>>();
check<Same<ours.TextSearchMatch, theirs.TextSearchMatch>>();
check<Same<ours.TextSearchPreview, theirs.TextSearchPreview>>();
check<Same<ours.TextSearchRange, theirs.TextSearchRange>>();
check<Same<ours.TextSearchOnProgressCallback, theirs.TextSearchOnProgressCallback>>();
check<Same<ours.ProxyOptions, theirs.ProxyOptions>>();
check<Same<ours.BootOptions, theirs.BootOptions>>();
check<Same<ours.PortListener, theirs.PortListener>>();
check<Same<ours.ServerReadyListener, theirs.ServerReadyListener>>();
check<Same<ours.ErrorListener, theirs.ErrorListener>>();
check<Same<ours.OpenListener, theirs.OpenListener>>();
check<Same<ours.CodeListener, theirs.CodeListener>>();
check<Same<ours.DirEnt<string>, theirs.DirEnt<string>>>();
check<Same<ours.WatchPathsOptions, theirs.WatchPathsOptions>>();
check<Same<ours.PathWatcherEvent, theirs.PathWatcherEvent>>();
check<Same<ours.FileSystemAPI, theirs.FileSystemAPI>>();
check<Same<ours.GlobOptions, theirs.GlobOptions>>();
check<Same<ours.IFSWatcher, theirs.IFSWatcher>>();
check<Same<ours.FSWatchOptions, theirs.FSWatchOptions>>();
check<Same<ours.FSWatchCallback, theirs.FSWatchCallback>>();
check<Same<ours.WebContainerProcess, theirs.WebContainerProcess>>();
check<Same<ours.SpawnOptions, theirs.SpawnOptions>>();
check<Same<ours.BufferEncoding, theirs.BufferEncoding>>();
check<Same<ours.PreviewScriptAPI, theirs.PreviewScriptAPI>>();
check<Same<ours.PreviewScriptStorageAPI, theirs.PreviewScriptStorageAPI>>();
check<Same<keyof typeof ours.PreviewMessageType, keyof typeof theirs.PreviewMessageType>>();
