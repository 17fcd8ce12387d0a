// Talking to this sandlot server: the JSON routes the page needs, and one interactive run over the WebSocket.
// Every URL is relative to the page's own origin; the page never contacts another host.

/** An error answer of the API ({"error": {"code", "message", "field"}}), or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", `cannot reach the server (${err.message})`);
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "http_" + response.status, error.message || response.statusText);
  }
  return data;
}

/** The languages this server offers: [{name, display_name, version, sample, ...}]. */
export async function fetchLanguages() {
  return (await request("GET", "/api/v1/languages")).languages;
}

/** The environments runs may name, each with the languages it offers: [{name, languages, ...}]. */
export async function fetchEnvironments() {
  return (await request("GET", "/api/v1/environments")).environments;
}

/** A new session: {session_id, expires_in_s}. */
export function createSession(body) {
  return request("POST", "/api/v1/sessions", body);
}

export function endSession(sessionId) {
  return request("DELETE", `/api/v1/sessions/${encodeURIComponent(sessionId)}`);
}

/** End a session while the page goes away (a normal fetch may be cut off). */
export function endSessionOnUnload(sessionId) {
  fetch(`/api/v1/sessions/${encodeURIComponent(sessionId)}`, { method: "DELETE", keepalive: true }).catch(() => {});
}

/**
 * Start one interactive run. `runMessage` is the WebSocket's first message minus its type
 * ({language, code, stdin?, session_id?, limits?, environment?}); `handlers` receive what the server says:
 *   onMessage(message)  each stage / stdout / stderr / stage_result / exit / error message
 *   onClose({code, reason, finished})  once, when the socket is closed (finished: an exit was seen)
 * Returns a handle to steer the run: sendStdin(text), closeStdin(), interrupt(), cancel().
 */
export function startRun(runMessage, handlers) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/api/v1/ws`);
  const pending = [JSON.stringify({ type: "run", ...runMessage })];
  let finished = false;

  const send = (message) => {
    const text = JSON.stringify(message);
    if (socket.readyState === WebSocket.CONNECTING) pending.push(text);
    else if (socket.readyState === WebSocket.OPEN) socket.send(text);
  };

  socket.addEventListener("open", () => {
    for (const text of pending.splice(0)) socket.send(text);
  });
  socket.addEventListener("message", (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return; // the server only sends JSON; ignore anything else rather than break the run
    }
    if (message.type === "exit") finished = true;
    handlers.onMessage(message);
  });
  socket.addEventListener("close", (event) => {
    handlers.onClose({ code: event.code, reason: event.reason, finished });
  });

  return {
    sendStdin: (data) => send({ type: "stdin", data }),
    closeStdin: () => send({ type: "close_stdin" }),
    interrupt: () => send({ type: "signal", signal: "SIGINT" }),
    // Closing the socket is how a client gives up: the server cancels the task.
    cancel: () => socket.close(1000, "cancelled by the user"),
  };
}
