// The output panel (streamed text, one class per source) and the status line under it.

// The server's status model, in words.
const STATUS_LABELS = {
  ok: "OK",
  runtime_error: "Runtime error",
  signaled: "Killed by a signal",
  timeout: "Time limit exceeded",
  memory_limit: "Memory limit exceeded",
  output_limit: "Output limit exceeded",
  compile_error: "Compile error",
  internal_error: "Internal error (the sandbox failed)",
  rejected: "Rejected",
};

/**
 * Output as spans: out-stdout, out-stderr, out-compile (either stream of the compile stage),
 * out-stdin (what the user typed), out-info and out-error (the page's own notes), out-truncated.
 *
 * Chunks are queued and written once per animation frame, runs of one class merged into one text
 * append: a program printing 1 MB in thousands of chunks costs a few DOM writes and layouts per
 * frame instead of one each (with a layout-forcing scroll check) per chunk.
 */
export function createOutput(panel) {
  let pending = []; // [text, cls] not in the DOM yet, in order
  let frame = 0; // the requested animation frame, 0 when none
  let endsLine = true; // the text so far (pending included) is empty or ends with a newline
  const seen = new Set(); // the classes appended since the last clear

  function flush() {
    frame = 0;
    if (!pending.length) return;
    const atBottom = panel.scrollHeight - panel.scrollTop - panel.clientHeight < 8;
    const runs = [];
    for (const [text, cls] of pending) {
      const run = runs[runs.length - 1];
      if (run && run.cls === cls) run.parts.push(text);
      else runs.push({ cls, parts: [text] });
    }
    pending = [];
    for (const { cls, parts } of runs) {
      const text = parts.join("");
      const last = panel.lastChild;
      if (last && last.className === cls && last.firstChild) last.firstChild.appendData(text);
      else {
        const span = document.createElement("span");
        span.className = cls;
        span.textContent = text;
        panel.append(span);
      }
    }
    if (atBottom) panel.scrollTop = panel.scrollHeight;
  }

  function append(text, cls) {
    if (!text) return;
    pending.push([text, cls]);
    seen.add(cls);
    endsLine = text.endsWith("\n");
    if (!frame) frame = requestAnimationFrame(flush);
  }

  /** A note of the page's own, on a line of its own. */
  function note(text, cls = "out-info") {
    append((endsLine ? "" : "\n") + text + "\n", cls);
  }

  return {
    append,
    note,
    clear() {
      if (frame) cancelAnimationFrame(frame);
      frame = 0;
      pending = [];
      endsLine = true;
      seen.clear();
      panel.replaceChildren();
    },
    has: (cls) => seen.has(cls),
  };
}

/** The status line: data-status carries the machine-readable state, the text says it for people. */
export function createStatusLine(element) {
  return {
    show(kind, label, details = []) {
      element.dataset.status = kind;
      const name = document.createElement("span");
      name.className = "status-name";
      name.textContent = label;
      element.replaceChildren(name, ...details.map((d) => ` · ${d}`));
    },
    showResult(result) {
      // A cancel ends a run as "signaled" (SIGKILL); its message says "cancelled ...": say that.
      if (result.status === "signaled" && (result.message || "").startsWith("cancelled")) {
        this.show("cancelled", "Cancelled", resultDetails(result));
        return;
      }
      this.show(result.status, STATUS_LABELS[result.status] || result.status, resultDetails(result));
    },
  };
}

function resultDetails(result) {
  const details = [];
  const hasSignal = result.signal !== null && result.signal !== undefined;
  // The message of a signaled run already says "killed by signal N (NAME)": say it once.
  const messageSaysSignal = hasSignal && (result.message || "").includes(`signal ${result.signal}`);
  if (hasSignal) {
    if (!messageSaysSignal) details.push(`signal ${result.signal}`);
  } else if (result.exit_code !== null && result.exit_code !== undefined) details.push(`exit code ${result.exit_code}`);
  details.push(`wall ${formatSeconds(result.wall_time)}`);
  details.push(`CPU ${formatSeconds(result.cpu_time)}`);
  details.push(`memory ${formatBytes(result.memory_peak)}`);
  if (result.truncated) details.push("output truncated");
  if (result.message) details.push(result.message);
  return details;
}

export function formatSeconds(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(2)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}
