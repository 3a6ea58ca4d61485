/** Bytes and strings in Node's encodings, without Node's Buffer (browsers have none). */

import type { BufferEncoding } from './types.js';

const utf8 = new TextEncoder();

export function toBase64(bytes: Uint8Array): string {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function fromBase64(text: string): Uint8Array {
  const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/').replace(/[^A-Za-z0-9+/]/g, ''));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) {
    bytes[i] = binary.charCodeAt(i);
  }
  return bytes;
}

/** `text` as bytes in `encoding` (Node's `Buffer.from(text, encoding)`). */
export function encode(text: string, encoding: string | null | undefined): Uint8Array {
  switch (normal(encoding)) {
    case 'utf8':
      return utf8.encode(text);
    case 'base64':
    case 'base64url':
      return fromBase64(text);
    case 'hex': {
      const pairs = text.match(/^(?:[0-9a-fA-F]{2})*/)?.[0] ?? '';
      return Uint8Array.from(pairs.match(/../g) ?? [], (pair) => parseInt(pair, 16));
    }
    case 'latin1':
      return Uint8Array.from(text, (char) => char.charCodeAt(0) & 0xff);
    case 'ascii':
      return Uint8Array.from(text, (char) => char.charCodeAt(0) & 0x7f);
    case 'utf16le': {
      const bytes = new Uint8Array(text.length * 2);
      for (let i = 0; i < text.length; i++) {
        const unit = text.charCodeAt(i);
        bytes[2 * i] = unit & 0xff;
        bytes[2 * i + 1] = unit >> 8;
      }
      return bytes;
    }
  }
}

/** `bytes` as a string in `encoding` (Node's `buffer.toString(encoding)`; UTF-8 is lossy). */
export function decode(bytes: Uint8Array, encoding: string | null | undefined): string {
  switch (normal(encoding)) {
    case 'utf8':
      return new TextDecoder().decode(bytes);
    case 'base64':
      return toBase64(bytes);
    case 'base64url':
      return toBase64(bytes).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    case 'hex':
      return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
    case 'latin1':
      return latin1(bytes);
    case 'ascii':
      return latin1(bytes.map((byte) => byte & 0x7f));
    case 'utf16le':
      return new TextDecoder('utf-16le').decode(bytes);
  }
}

function latin1(bytes: Uint8Array): string {
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return text;
}

type Normal = 'utf8' | 'base64' | 'base64url' | 'hex' | 'latin1' | 'ascii' | 'utf16le';

function normal(encoding: string | null | undefined): Normal {
  const name = (encoding ?? 'utf8').toLowerCase() as BufferEncoding;
  switch (name) {
    case 'utf8':
    case 'utf-8':
      return 'utf8';
    case 'binary':
    case 'latin1':
      return 'latin1';
    case 'ucs2':
    case 'ucs-2':
    case 'utf16le':
      return 'utf16le';
    case 'base64':
    case 'base64url':
    case 'hex':
    case 'ascii':
      return name;
    default:
      throw Object.assign(new TypeError(`Unknown encoding: ${encoding}`), {
        code: 'ERR_UNKNOWN_ENCODING',
      });
  }
}
