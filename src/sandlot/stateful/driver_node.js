// The Node.js REPL driver of a stateful session: run in the box as `node -e <this file's text> MARKER`.
// The protocol is driver_python.py's (see protocol.py): cells framed on stdin as `<length>\n<JSON>`;
// after each, `MARKER\n` on stderr and `MARKER <report JSON>\n` on stdout (pipes are synchronous on
// Linux, so the cell's own output comes first). A cell runs as a script in this one global context, so
// its var, let, const, function and class declarations stay; its completion value is the value. Cells
// run from stdin's data events: timers and promises a cell starts keep running between cells. SIGINT
// interrupts a running cell (breakOnSigint) and is ignored between cells.
"use strict";
const fs = require("fs");
const util = require("util");
const vm = require("vm");

const MARKER = Buffer.from(process.argv[process.argv.length - 1]);
const VALUE_MAX_CHARS = 64 * 1024;
globalThis.require = require; // a cell is a script, not a module: give it require as a REPL does

process.on("SIGINT", () => {}); // between cells; while one runs, breakOnSigint turns it into an error
process.on("uncaughtException", (err) => {
  // a timer or promise of an earlier cell failed: say so, never end the session for it
  writeAll(2, Buffer.from(`${(err && err.stack) || String(err)}\n`));
});

function writeAll(fd, data) {
  let offset = 0;
  while (offset < data.length) {
    try {
      offset += fs.writeSync(fd, data, offset);
    } catch (err) {
      if (err.code !== "EAGAIN") throw err;
    }
  }
}

function userStack(err) {
  // the message and the cell's own frames; the driver's and Node's are noise to the user
  if (!err || typeof err.stack !== "string") return String(err);
  const [head, ...frames] = err.stack.split("\n");
  return [head, ...frames.filter((line) => line.includes("<cell>"))].join("\n");
}

function runCell(cell) {
  const report = { outcome: "ok", value: null, value_chars: 0, error: "" };
  try {
    const script = new vm.Script(cell.code, { filename: "<cell>" });
    const value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
    if (value !== undefined) {
      const text = util.inspect(value);
      report.value_chars = text.length;
      report.value = text.slice(0, VALUE_MAX_CHARS);
    }
  } catch (err) {
    if (err && err.code === "ERR_SCRIPT_EXECUTION_INTERRUPTED") {
      report.outcome = "interrupted";
    } else {
      report.outcome = "error";
      report.error = (err && err.name) || typeof err;
      writeAll(2, Buffer.from(`${userStack(err)}\n`));
    }
  }
  writeAll(2, Buffer.concat([MARKER, Buffer.from("\n")]));
  writeAll(1, Buffer.concat([MARKER, Buffer.from(` ${JSON.stringify(report)}\n`)]));
}

let pending = Buffer.alloc(0);
process.stdin.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  for (;;) {
    const newline = pending.indexOf(10);
    if (newline < 0) return;
    const length = parseInt(pending.subarray(0, newline).toString(), 10);
    if (pending.length < newline + 1 + length) return;
    const cell = JSON.parse(pending.subarray(newline + 1, newline + 1 + length).toString());
    pending = pending.subarray(newline + 1 + length);
    runCell(cell);
  }
});
process.stdin.on("end", () => process.exit(0));
