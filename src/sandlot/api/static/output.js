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
 * out-stdin (what the user typed), out-info and out-error (the page's own notes).
 */
export function createOutput(panel) {
  let last = null; // the span the next chunk of the same class is appended to

  function append(text, cls) {
    if (!text) return;
    const atBottom = panel.scrollHeight - panel.scrollTop - panel.clientHeight < 8;
    if (last && last.className === cls && last === panel.lastChild) {
      last.textContent += text;
    } else {
      last = document.createElement("span");
      last.className = cls;
      last.textContent = text;
      panel.append(last);
    }
    if (atBottom) panel.scrollTop = panel.scrollHeight;
  }

  /** A note of the page's own, on a line of its own. */
  function note(text, cls = "out-info") {
    const endsLine = !panel.textContent || panel.textContent.endsWith("\n");
    append((endsLine ? "" : "\n") + text + "\n", cls);
  }

  return {
    append,
    note,
    clear() {
      panel.replaceChildren();
      last = null;
    },
    has: (cls) => panel.querySelector(`.${cls}`) !== null,
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
  if (result.signal !== null && result.signal !== undefined) details.push(`signal ${result.signal}`);
  else if (result.exit_code !== null && result.exit_code !== undefined) details.push(`exit code ${result.exit_code}`);
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
