// Which lines of the user's file a compiler or interpreter complained about, read from its output.
//
// Formats: gcc/g++/go/node "file:line[:col][: message]", javac "File.java:line: error: message",
// a Python traceback's 'File "main.py", line N' (its last frame in the user's file: where it broke),
// bash "main.sh: line N: message". Only files with one of the language's extensions count, so a line
// in a header or the standard library never marks a line of the user's code.

const FILE_LINE = /(?:^|[\s(])(?:[^\s:()]*\/)?([\w.-]+):(\d+)(?::\d+)?(?::\s*(.*))?$/;
const PYTHON_FRAME = /^\s*File "(?:.*\/)?([^"/]+)", line (\d+)/;
const BASH_LINE = /^(?:.*\/)?([\w.-]+): line (\d+): (.*)$/;

/** [{line, message}] for the lines of a file ending in one of `extensions` that `text` names. */
export function errorLines(text, extensions) {
  const ours = (file) => extensions.some((ext) => file.endsWith(ext));
  const lines = (text || "").split("\n");
  const found = [];
  let pythonFrame = null; // the innermost frame in the user's file, waiting for the exception line
  lines.forEach((raw, index) => {
    const line = raw.trimEnd();
    const frame = line.match(PYTHON_FRAME);
    if (frame) {
      if (ours(frame[1])) pythonFrame = { line: Number(frame[2]), message: "" };
      return;
    }
    if (pythonFrame && /^\w*(Error|Exception|Interrupt|Exit)\b/.test(line)) {
      found.push({ ...pythonFrame, message: line });
      pythonFrame = null;
      return;
    }
    const match = line.match(BASH_LINE) || line.match(FILE_LINE);
    if (!match || !ours(match[1])) return;
    // node prints "main.js:3" alone, the code and a caret, then the error: take the first such line after.
    const message = match[3] || lines.slice(index + 1).find((l) => /^\w*Error\b/.test(l)) || line;
    found.push({ line: Number(match[2]), message: message.trim() });
  });
  if (pythonFrame) found.push(pythonFrame);
  // Warnings are marked only when there is no error: the error is what stopped the build.
  const errors = found.filter((e) => !/^warning\b/i.test(e.message));
  return errors.length ? errors : found;
}
