// The playground page: wires the editor, the API and the output panel together.
//
// A run is one WebSocket (api.startRun): its first message carries the code, then the page
// relays typed input and Stop presses, and renders what comes back. At most one run at a time.
//
// The editor is CodeMirror when the server has its bundle (the <body>'s data-code-editor names it),
// else the plain textarea editor of editor.js, with a note saying why: the page works either way.

import {
  ApiError,
  createSession,
  endSession,
  endSessionOnUnload,
  fetchEnvironments,
  fetchLanguages,
  startRun,
} from "./api.js";
import { createEditor as createPlainEditor } from "./editor.js";
import { errorLines } from "./errors.js";
import { createOutput, createStatusLine } from "./output.js";
import { decodeShare, encodeShare } from "./share.js";

const $ = (id) => document.getElementById(id);
const ui = {
  language: $("language"),
  version: $("version"),
  environmentField: $("environment-field"),
  environment: $("environment"),
  stdin: $("stdin"),
  limitCpu: $("limit-cpu"),
  limitWall: $("limit-wall"),
  limitMemory: $("limit-memory"),
  run: $("run"),
  stop: $("stop"),
  keepFiles: $("keep-files"),
  notebook: $("notebook"),
  sessionInfo: $("session-info"),
  share: $("share"),
  shareBox: $("share-box"),
  shareLink: $("share-link"),
  shareNote: $("share-note"),
  clear: $("clear"),
  lineForm: $("stdin-line-form"),
  line: $("stdin-line"),
  sendLine: $("send-line"),
  sendEof: $("send-eof"),
};

const onEdit = () => {
  ui.shareBox.hidden = true; // the link no longer matches the code
};
let editor = null; // set by loadEditor, before the languages are loaded
const output = createOutput($("output"));
const status = createStatusLine($("status"));

const languages = new Map(); // name -> {name, display_name, version, sample, ...}: those offered where runs go
const hostLanguages = []; // the host's, in the server's order
const environments = new Map(); // name -> {name, languages: [names]}
let loadedSample = ""; // the sample last put in the editor: code equal to it is not the user's
let run = null; // {handle, interrupted, cancelled, failed, inputOpen} while a run lasts
let session = null; // {id, notebook, language} once created; {pending: Promise, notebook} while being created

// ------------------------------------------------------------------ the editor

async function loadEditor() {
  const url = document.body.dataset.codeEditor;
  let why = "the code editor is not built on this server (scripts/setup.sh builds it with npm)";
  if (url) {
    try {
      const bundle = await import(url);
      const holder = $("editor");
      holder.replaceChildren(); // the textarea and its gutter
      const styleNonce = document.body.dataset.styleNonce;
      return bundle.createEditor(holder, { onEdit, onRun: startRunning, labelledBy: "code-label", styleNonce });
    } catch (err) {
      why = `the code editor could not be loaded (${err.message})`;
    }
  }
  const note = $("editor-note");
  note.textContent = `Plain text editor: ${why}. No highlighting or error marks.`;
  note.hidden = false;
  const plain = createPlainEditor($("code"), $("gutter"), { onEdit });
  return { ...plain, kind: "plain", setLanguage() {}, markErrors() {} };
}

// ------------------------------------------------------------------ languages

async function loadLanguages() {
  let list;
  try {
    list = await fetchLanguages();
  } catch (err) {
    const needsKey = err instanceof ApiError && (err.status === 401 || err.status === 403);
    const why = needsKey ? "this server requires an API key, which the playground does not support yet" : err.message;
    status.show("error", "Unavailable", [why]);
    ui.language.replaceChildren(new Option("—", ""));
    return;
  }
  hostLanguages.push(...list);
  offerLanguages(list);
  if (!restoreShared() && languages.size) selectLanguage(languages.has("python") ? "python" : list[0].name);
  setRunning(false);
  loadEnvironments();
}

/** Fill the language picker with these languages, keeping the chosen one when it is among them. */
function offerLanguages(list) {
  const chosen = ui.language.value;
  languages.clear();
  for (const lang of list) languages.set(lang.name, lang);
  ui.language.replaceChildren(...list.map((lang) => new Option(lang.display_name, lang.name)));
  ui.language.disabled = list.length === 0;
  if (languages.has(chosen)) ui.language.value = chosen;
}

// ------------------------------------------------------------------ environments

/** The environment picker: shown only when the server has environments this page may use. */
async function loadEnvironments() {
  let list;
  try {
    list = await fetchEnvironments();
  } catch {
    return; // no picker: runs go to the host, as on a server without environments
  }
  for (const env of list) environments.set(env.name, env);
  ui.environment.append(...list.map((env) => new Option(env.name, env.name)));
  ui.environmentField.hidden = list.length === 0;
}

/** The languages an environment offers: the host's description where the host has one too, else its name. */
function languagesOf(envName) {
  const env = environments.get(envName);
  if (!env) return hostLanguages;
  const byName = new Map(hostLanguages.map((lang) => [lang.name, lang]));
  return env.languages.map((name) => {
    const host = byName.get(name);
    // Its version there is not the host's (nor probed): only the name and the sample are shown.
    return host ? { ...host, version: "" } : { name, display_name: name, version: "", sample: "", extensions: [] };
  });
}

ui.environment.addEventListener("change", () => {
  const before = ui.language.value;
  offerLanguages(languagesOf(ui.environment.value));
  const name = languages.has(before) ? before : languages.has("python") ? "python" : ui.language.options[0]?.value;
  if (name) selectLanguage(name, { keepCode: name === before });
  else ui.version.textContent = "";
  setRunning(false); // the picker is disabled while a run lasts: nothing is running here
});

function selectLanguage(name, { keepCode = false } = {}) {
  const lang = languages.get(name);
  if (!lang) return;
  ui.language.value = name;
  ui.version.textContent = lang.version && lang.version !== "unknown" ? lang.version : "";
  editor.setIndent(name === "go" ? "\t" : "    ");
  editor.setLanguage(name);
  const current = editor.getValue();
  const edited = current.trim() !== "" && current !== loadedSample;
  if (!keepCode && !edited) editor.setValue(lang.sample || "");
  loadedSample = lang.sample || "";
}

ui.language.addEventListener("change", () => {
  selectLanguage(ui.language.value);
  // A notebook keeps one interpreter: another language cannot run in it.
  const ran = session?.language;
  if (ui.notebook.checked && ran && ran !== ui.language.value) {
    ui.notebook.checked = false;
    stopSession().then(() => {
      ui.sessionInfo.textContent = `Notebook ended: it ran ${ran}; turn it on again for this language.`;
    });
  }
});
// Back to the language's sample, edited code or not (in CodeMirror, Ctrl+Z brings the code back).
$("sample").addEventListener("click", () => {
  const lang = languages.get(ui.language.value);
  if (!lang) return;
  editor.setValue(lang.sample || "");
  loadedSample = lang.sample || "";
  editor.focus();
});

// ------------------------------------------------------------------ share links

/** Load the language and code of a share link in the address; true if there was one. */
function restoreShared() {
  let shared;
  try {
    shared = decodeShare(location.hash);
  } catch {
    output.note("This link's code could not be read.", "out-error");
    return false;
  }
  if (!shared) return false;
  if (!languages.has(shared.language)) {
    output.note(`The shared language "${shared.language}" is not offered by this server.`, "out-error");
    return false;
  }
  editor.setValue(shared.code);
  selectLanguage(shared.language, { keepCode: true });
  return true;
}

window.addEventListener("hashchange", () => {
  if (languages.size) restoreShared();
});

ui.share.addEventListener("click", async () => {
  const fragment = encodeShare(ui.language.value, editor.getValue());
  history.replaceState(null, "", `#${fragment}`);
  ui.shareLink.value = `${location.origin}${location.pathname}#${fragment}`;
  ui.shareBox.hidden = false;
  ui.shareLink.focus();
  ui.shareLink.select();
  ui.shareNote.textContent = "";
  try {
    await navigator.clipboard.writeText(ui.shareLink.value);
    ui.shareNote.textContent = "Copied to the clipboard.";
  } catch {
    ui.shareNote.textContent = "Copy the link above.";
  }
});

// ------------------------------------------------------------------ sessions

ui.keepFiles.addEventListener("change", () => toggleSession(ui.keepFiles, ui.notebook, false));
ui.notebook.addEventListener("change", () => toggleSession(ui.notebook, ui.keepFiles, true));

/** One session at a time: turning one toggle on ends the other's session first. */
async function toggleSession(toggle, other, notebook) {
  if (!toggle.checked) {
    await stopSession();
    return;
  }
  if (other.checked) {
    other.checked = false;
    await stopSession();
  }
  startSession(notebook);
}

function startSession(notebook) {
  ui.sessionInfo.textContent = "Creating a session…";
  const language = ui.language.value;
  const body = notebook ? { stateful: true, language } : undefined;
  const pending = createSession(body).then(
    (data) => {
      if (session?.pending !== pending) {
        endSession(data.session_id).catch(() => {}); // toggled off meanwhile
        return;
      }
      session = { id: data.session_id, notebook, language: data.language };
      const minutes = Math.round(data.expires_in_s / 60);
      const short = data.session_id.slice(0, 8);
      ui.sessionInfo.textContent = notebook
        ? `Notebook: variables stay between runs (session ${short}…, up to ${minutes} min).`
        : `Files are kept between runs (session ${short}…, up to ${minutes} min).`;
      ui.sessionInfo.dataset.sessionId = data.session_id;
    },
    (err) => {
      if (session?.pending !== pending) return;
      session = null;
      (notebook ? ui.notebook : ui.keepFiles).checked = false;
      ui.sessionInfo.textContent = `No session: ${err.message}`;
    },
  );
  session = { pending, notebook };
}

async function stopSession() {
  const id = session?.id;
  const notebook = session?.notebook;
  session = null;
  delete ui.sessionInfo.dataset.sessionId;
  if (!id) {
    ui.sessionInfo.textContent = "";
    return;
  }
  try {
    await endSession(id);
    ui.sessionInfo.textContent = notebook ? "Notebook ended; its variables are gone." : "Session ended; its files are gone.";
  } catch (err) {
    ui.sessionInfo.textContent = err.status === 404 ? "The session had expired." : `Could not end the session: ${err.message}`;
  }
}

/** The session id for the next run, waiting for one being created; null when files are not kept. */
async function sessionForRun() {
  if (session?.pending) await session.pending;
  return session?.id ?? null;
}

window.addEventListener("pagehide", () => {
  if (session?.id) endSessionOnUnload(session.id);
});

// ------------------------------------------------------------------ running

function readLimits() {
  const limits = {};
  const fields = [
    [ui.limitCpu, "time_limit", parseFloat],
    [ui.limitWall, "wall_time_limit", parseFloat],
    [ui.limitMemory, "memory_limit", (v) => parseInt(v, 10)],
  ];
  for (const [input, name, parse] of fields) {
    const value = parse(input.value);
    if (input.value.trim() !== "" && Number.isFinite(value)) limits[name] = value;
  }
  return Object.keys(limits).length ? limits : null;
}

async function startRunning() {
  if (run || !ui.language.value) return;
  const message = { language: ui.language.value, code: editor.getValue() };
  if (ui.environment.value) message.environment = ui.environment.value;
  if (ui.stdin.value) message.stdin = ui.stdin.value; // sent whole, then closed
  const limits = readLimits();
  if (limits) message.limits = limits;
  run = { handle: null, interrupted: false, cancelled: false, failed: false, inputOpen: !message.stdin };
  setRunning(true);
  output.clear();
  editor.markErrors([]);
  status.show("connecting", "Starting…");
  $("output").scrollIntoView({ block: "nearest" }); // on a phone the output is below the fold
  const sessionId = await sessionForRun();
  if ((ui.keepFiles.checked || ui.notebook.checked) && !sessionId) {
    finishRun();
    status.show("error", "Not run", ["the session could not be created"]);
    return;
  }
  if (sessionId) message.session_id = sessionId;
  run.handle = startRun(message, { onMessage, onClose });
}

function onMessage(message) {
  switch (message.type) {
    case "stage":
      if (message.stage === "compile") status.show("compiling", "Compiling…");
      else status.show("running", "Running…");
      break;
    case "stdout":
    case "stderr":
      output.append(message.data, message.stage === "compile" ? "out-compile" : `out-${message.type}`);
      break;
    case "exit":
      showExit(message.result);
      break;
    case "error":
      showError(message.error || {});
      break;
    default: // stage_result: the exit message says it all again
  }
}

function showExit(result) {
  // Compile output normally streams in; a result replayed without its events still shows it.
  if (result.compile_output && !output.has("out-compile")) output.append(result.compile_output, "out-compile");
  if (result.truncated) output.note("[output truncated here: the run reached its output limit]", "out-truncated");
  if (result.value !== null && result.value !== undefined) output.note(`⇒ ${result.value}`, "out-value"); // a notebook cell
  status.showResult(result);
  markErrors(result);
}

/** Mark the lines a compile error (or an interpreter's syntax error or traceback) points at. */
function markErrors(result) {
  const extensions = languages.get(result.language || ui.language.value)?.extensions || [];
  let text = "";
  if (result.status === "compile_error") text = result.compile_output;
  else if (result.status === "runtime_error") text = result.stderr;
  editor.markErrors(text ? errorLines(text, extensions) : []);
}

function showError(error) {
  run.failed = true;
  output.note(error.message || "the server refused the run", "out-error");
  status.show("error", "Error", [error.message || error.code || "unknown"]);
  if ((error.field === "session_id" || error.code === "not_found") && session?.id) {
    session = null; // expired or ended elsewhere: say so, and let the user turn it on again
    ui.keepFiles.checked = false;
    ui.notebook.checked = false;
    delete ui.sessionInfo.dataset.sessionId;
    ui.sessionInfo.textContent = "The session is gone (expired?); turn Keep files on again for a new one.";
  }
}

function onClose({ code, finished }) {
  if (!finished && !run.failed) {
    if (run.cancelled) status.show("cancelled", "Cancelled", ["the run was stopped"]);
    else status.show("error", "Disconnected", [`the connection closed (${code}) before the run ended`]);
  }
  finishRun();
}

function finishRun() {
  run = null;
  setRunning(false);
}

function setRunning(running) {
  const ready = languages.size > 0;
  ui.run.disabled = running || !ready;
  ui.stop.disabled = !running;
  ui.stop.textContent = "Stop";
  ui.stop.removeAttribute("aria-label");
  ui.keepFiles.disabled = running || !ready;
  ui.environment.disabled = running;
  setInputOpen(running && run.inputOpen);
}

function setInputOpen(open) {
  ui.line.disabled = !open;
  ui.sendLine.disabled = !open;
  ui.sendEof.disabled = !open;
}

ui.run.addEventListener("click", startRunning);
document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented) return; // CodeMirror ran it already (its own Mod-Enter binding)
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    startRunning();
  }
});

// Stop: first an interrupt the program may handle (SIGINT), then, pressed again, give up on it.
ui.stop.addEventListener("click", () => {
  if (!run?.handle) return;
  if (!run.interrupted) {
    run.interrupted = true;
    run.handle.interrupt();
    output.note("^C (press Stop again to cancel the run)");
    ui.stop.textContent = "Force stop";
    ui.stop.setAttribute("aria-label", "Force stop: cancel the run");
  } else {
    run.cancelled = true;
    run.handle.cancel();
  }
});

// ------------------------------------------------------------------ typing to the program

function sendLine(text) {
  if (!run?.handle || !run.inputOpen) return;
  run.handle.sendStdin(text);
  output.append(text, "out-stdin");
}

function sendEof() {
  if (!run?.handle || !run.inputOpen) return;
  if (ui.line.value) sendLine(ui.line.value); // like a terminal: Ctrl+D sends what is typed, then EOF
  ui.line.value = "";
  run.handle.closeStdin();
  run.inputOpen = false;
  setInputOpen(false);
  output.note("^D (end of input)");
}

ui.lineForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sendLine(`${ui.line.value}\n`);
  ui.line.value = "";
});
ui.line.addEventListener("keydown", (event) => {
  if ((event.key === "d" || event.key === "D") && event.ctrlKey) {
    event.preventDefault();
    sendEof();
  }
});
ui.sendEof.addEventListener("click", sendEof);
ui.clear.addEventListener("click", () => output.clear());

loadEditor().then((ready) => {
  editor = ready;
  loadLanguages();
});
