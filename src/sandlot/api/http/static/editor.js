// A small code editor on a plain <textarea>: line numbers, Tab/Shift+Tab indenting, auto-indent on Enter.
//
// Tab is kept inside the editor (it indents), which would trap keyboard users: Escape releases it,
// so Escape then Tab moves on, as in most web code editors.

/**
 * Make `textarea` an editor whose line numbers are drawn in `gutter`.
 * `onEdit()` is called after every change the user makes (not after setValue).
 */
export function createEditor(textarea, gutter, { onEdit = () => {} } = {}) {
  let indentUnit = "    ";
  let tabReleased = false;
  let lineCount = 0;

  function renderGutter() {
    const lines = textarea.value.split("\n").length;
    if (lines !== lineCount) {
      lineCount = lines;
      // One spare line: the textarea's horizontal scrollbar takes room the gutter does not have.
      gutter.textContent = Array.from({ length: lines }, (_, i) => i + 1).join("\n") + "\n ";
    }
    gutter.scrollTop = textarea.scrollTop;
  }

  /** Replace [start, end) with text, keeping the browser's undo history where it can. */
  function replaceRange(start, end, text, selectStart, selectEnd) {
    textarea.focus();
    textarea.setSelectionRange(start, end);
    // execCommand is deprecated but the only way to keep Ctrl+Z working in a textarea.
    const done = document.queryCommandSupported?.("insertText") && document.execCommand("insertText", false, text);
    if (!done) {
      textarea.setRangeText(text, start, end, "end");
      textarea.dispatchEvent(new Event("input", { bubbles: true }));
    }
    if (selectStart !== undefined) textarea.setSelectionRange(selectStart, selectEnd ?? selectStart);
  }

  function lineStart(pos) {
    return textarea.value.lastIndexOf("\n", pos - 1) + 1;
  }

  function indent(outdent) {
    const { selectionStart: start, selectionEnd: end, value } = textarea;
    const multiLine = value.slice(start, end).includes("\n");
    if (!outdent && !multiLine) {
      replaceRange(start, end, indentUnit);
      return;
    }
    // Re-indent every line the selection touches.
    const from = lineStart(start);
    const to = end > start && value[end - 1] === "\n" ? end - 1 : end;
    const lines = value.slice(from, to).split("\n");
    const changed = lines.map((line) => (outdent ? stripIndent(line) : indentUnit + line));
    const text = changed.join("\n");
    const firstDelta = changed[0].length - lines[0].length;
    const newStart = Math.max(from, start + firstDelta);
    replaceRange(from, to, text, multiLine ? from : newStart, multiLine ? from + text.length : newStart);
  }

  function stripIndent(line) {
    if (line.startsWith("\t")) return line.slice(1);
    const spaces = line.match(/^ {1,4}/);
    return spaces ? line.slice(spaces[0].length) : line;
  }

  function newlineWithIndent() {
    const { selectionStart: start, selectionEnd: end, value } = textarea;
    const current = value.slice(lineStart(start), start);
    const leading = current.match(/^[ \t]*/)[0];
    replaceRange(start, end, "\n" + leading);
  }

  textarea.addEventListener("keydown", (event) => {
    if (event.isComposing) return; // an input method is composing: its keys are not ours
    if (event.key === "Escape") {
      tabReleased = true;
      return;
    }
    if (event.key === "Tab" && !event.ctrlKey && !event.altKey && !event.metaKey) {
      if (tabReleased) {
        tabReleased = false;
        return; // let the browser move focus
      }
      event.preventDefault();
      indent(event.shiftKey);
      return;
    }
    tabReleased = false;
    if (event.key === "Enter" && !event.ctrlKey && !event.metaKey && !event.altKey && !event.shiftKey) {
      event.preventDefault();
      newlineWithIndent();
    }
  });
  textarea.addEventListener("blur", () => {
    tabReleased = false;
  });
  textarea.addEventListener("input", () => {
    renderGutter();
    onEdit();
  });
  textarea.addEventListener("scroll", () => {
    gutter.scrollTop = textarea.scrollTop;
  });

  renderGutter();

  return {
    getValue: () => textarea.value,
    /** Replace the whole text (a sample, a shared link): not a user edit. */
    setValue(text) {
      textarea.value = text;
      textarea.setSelectionRange(0, 0);
      textarea.scrollTop = 0;
      renderGutter();
    },
    /** What Tab inserts: four spaces, or a tab character (Go). */
    setIndent(unit) {
      indentUnit = unit;
    },
    focus: () => textarea.focus(),
  };
}
