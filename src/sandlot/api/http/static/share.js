// Share links: the language and the code travel in the URL fragment, which browsers never send to a server:
//   #lang=python&code=<base64url of the UTF-8 source, unpadded>

/** The fragment (without "#") for this language and code. */
export function encodeShare(language, code) {
  return `lang=${encodeURIComponent(language)}&code=${toBase64Url(new TextEncoder().encode(code))}`;
}

/**
 * {language, code} from a fragment (with or without "#"); null when it is not a share link.
 * Throws a SyntaxError when it is one but its code cannot be decoded.
 */
export function decodeShare(fragment) {
  const params = new URLSearchParams(fragment.replace(/^#/, ""));
  const language = params.get("lang");
  const encoded = params.get("code");
  if (!language || encoded === null) return null;
  const bytes = fromBase64Url(encoded);
  return { language, code: new TextDecoder("utf-8", { fatal: true }).decode(bytes) };
}

function toBase64Url(bytes) {
  let binary = "";
  const chunk = 0x8000; // String.fromCharCode(...hugeArray) would overflow the stack
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode(...bytes.subarray(i, i + chunk));
  }
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromBase64Url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new SyntaxError("not base64url");
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  let binary;
  try {
    binary = atob(base64);
  } catch {
    throw new SyntaxError("not base64url");
  }
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}
