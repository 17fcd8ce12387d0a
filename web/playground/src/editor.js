// The playground's code editor: CodeMirror 6, bundled by esbuild into static/bundle/editor.js at set-up.
//
// It offers the same small interface as the plain-textarea fallback (static/editor.js), plus what only a
// real editor can do: syntax highlighting per language and marking the lines a compiler complained about.
// Highlighting uses classHighlighter (stable `tok-*` classes styled in playground.css), so the only style
// generated at run time is CodeMirror's own base theme (a <style> element carrying the page's CSP nonce).

import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { cpp } from "@codemirror/lang-cpp";
import { go } from "@codemirror/lang-go";
import { java } from "@codemirror/lang-java";
import { javascript } from "@codemirror/lang-javascript";
import { python } from "@codemirror/lang-python";
import { bracketMatching, indentOnInput, indentUnit, StreamLanguage, syntaxHighlighting } from "@codemirror/language";
import { shell } from "@codemirror/legacy-modes/mode/shell";
import { Compartment, EditorState, RangeSetBuilder, StateEffect, StateField } from "@codemirror/state";
import {
  Decoration,
  drawSelection,
  EditorView,
  highlightActiveLine,
  highlightActiveLineGutter,
  keymap,
  lineNumbers,
} from "@codemirror/view";
import { classHighlighter } from "@lezer/highlight";

export { EditorView }; // the Chromium tests read the document through EditorView.findFromDOM

const LANGUAGES = {
  python: () => python(),
  bash: () => StreamLanguage.define(shell),
  javascript: () => javascript(),
  c: () => cpp(),
  cpp: () => cpp(),
  go: () => go(),
  java: () => java(),
};

// The lines to mark: replaced whole by each setErrors effect, and dropped as soon as the text changes
// (the line numbers no longer mean what the compiler meant).
const setErrors = StateEffect.define();
const errorLines = StateField.define({
  create: () => Decoration.none,
  update(marks, tr) {
    for (const effect of tr.effects) if (effect.is(setErrors)) return effect.value;
    return tr.docChanged ? Decoration.none : marks;
  },
  provide: (field) => EditorView.decorations.from(field),
});

function errorDecorations(doc, errors) {
  const byLine = new Map();
  for (const { line, message } of errors) {
    if (line < 1 || line > doc.lines) continue; // a header's line, or a stale report
    byLine.set(line, byLine.has(line) ? `${byLine.get(line)}\n${message}` : message);
  }
  const builder = new RangeSetBuilder();
  for (const line of [...byLine.keys()].sort((a, b) => a - b)) {
    const deco = Decoration.line({ class: "cm-error-line", attributes: { title: byLine.get(line) } });
    builder.add(doc.line(line).from, doc.line(line).from, deco);
  }
  return builder.finish();
}

/**
 * A CodeMirror editor appended to `parent`, labelled by the element with id `labelledBy`.
 * `onEdit()` is called after every change the user makes (not after setValue); Ctrl/Cmd+Enter calls
 * `onRun()` (instead of CodeMirror's own binding, which would insert a blank line). `styleNonce` is the
 * page's CSP style nonce: CodeMirror's base theme goes into a <style> element that needs it.
 */
export function createEditor(parent, { onEdit = () => {}, onRun = () => {}, labelledBy, styleNonce } = {}) {
  const language = new Compartment();
  const indent = new Compartment();
  let settingValue = false;

  const view = new EditorView({
    parent,
    state: EditorState.create({
      extensions: [
        lineNumbers(),
        highlightActiveLineGutter(),
        history(),
        drawSelection(),
        indentOnInput(),
        bracketMatching(),
        highlightActiveLine(),
        syntaxHighlighting(classHighlighter),
        errorLines,
        EditorView.cspNonce.of(styleNonce || ""),
        language.of([]),
        indent.of(indentUnit.of("    ")),
        keymap.of([
          { key: "Mod-Enter", run: () => (onRun(), true) },
          indentWithTab,
          ...defaultKeymap,
          ...historyKeymap,
        ]),
        EditorView.contentAttributes.of({ "aria-labelledby": labelledBy, spellcheck: "false" }),
        // Escape hands Tab back to the browser until the next other key or leaving the editor, so the
        // editor never traps keyboard users (Tab indents otherwise).
        EditorView.domEventHandlers({
          keydown(event, v) {
            if (event.key === "Escape") v.setTabFocusMode(true);
            else if (event.key !== "Tab" && v.state.facet(EditorView.editable)) v.setTabFocusMode(false);
            return false;
          },
          blur(_event, v) {
            v.setTabFocusMode(false);
            return false;
          },
          // Typing over a selection natively makes Chromium wrap the new text in a style attribute that
          // keeps the replaced token's colour, which the page's CSP blocks (and logs). Do that edit here.
          beforeinput(event, v) {
            const replaces = event.inputType === "insertText" && event.data && !v.state.selection.main.empty;
            if (!replaces || event.isComposing || v.composing) return false;
            event.preventDefault();
            v.dispatch(v.state.replaceSelection(event.data), { scrollIntoView: true, userEvent: "input.type" });
            return true;
          },
        }),
        EditorView.updateListener.of((update) => {
          if (update.docChanged && !settingValue) onEdit();
        }),
      ],
    }),
  });

  return {
    kind: "codemirror",
    getValue: () => view.state.doc.toString(),
    /** Replace the whole text (a sample, a shared link): not a user edit. */
    setValue(text) {
      settingValue = true;
      try {
        view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text }, selection: { anchor: 0 } });
      } finally {
        settingValue = false;
      }
      view.scrollDOM.scrollTop = 0;
    },
    /** What Tab inserts: four spaces, or a tab character (Go). */
    setIndent(unit) {
      view.dispatch({ effects: indent.reconfigure(indentUnit.of(unit)) });
    },
    /** Highlight as `name` (a server language name); unknown names get plain text. */
    setLanguage(name) {
      const make = LANGUAGES[name];
      view.dispatch({ effects: language.reconfigure(make ? make() : []) });
    },
    /** Mark these lines ([{line, message}], 1-based); an empty list clears the marks. */
    markErrors(errors) {
      view.dispatch({ effects: setErrors.of(errorDecorations(view.state.doc, errors)) });
    },
    focus: () => view.focus(),
  };
}
