// The client as users get it: `npm pack`, then installed from that tarball alone (offline) into a
// fresh CommonJS project (`npm init -y`'s default, importing it with `import()`) and a fresh ESM
// project; and the bare file copied into a CommonJS project. Each must import and construct a Client.
// Run by `npm test` (and so by scripts/test.sh).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, copyFileSync, rmSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const here = fileURLToPath(new URL('..', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'switchboard-pack-'));
const npm = (args, cwd) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const node = (args, cwd) => execFileSync(process.execPath, args, { cwd, encoding: 'utf8' });

// What every project runs: import the package (or the copy), and use it.
const check = (specifier) => `
  const m = await import(${JSON.stringify(specifier)});
  if (typeof m.Client !== 'function' || typeof m.VERSION !== 'string') throw new Error('bad exports: ' + Object.keys(m));
  const c = new m.Client('http://127.0.0.1:9');
  if (c.state !== 'disconnected') throw new Error('state ' + c.state);
  console.log('ok ' + m.VERSION);
`;

try {
  const packed = JSON.parse(npm(['pack', '--json', '--pack-destination', work], here))[0];
  const tarball = join(work, packed.filename);
  const files = packed.files.map((f) => f.path).sort();
  assert.deepEqual(files, ['README.md', 'package.json', 'switchboard.d.mts', 'switchboard.mjs']);

  for (const kind of ['commonjs', 'module']) {
    const dir = join(work, kind);
    execFileSync('mkdir', ['-p', dir]);
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `fresh-${kind}`, version: '1.0.0', type: kind }));
    // Offline, from the tarball only: the package has no dependencies to fetch.
    npm(['install', '--offline', '--no-audit', '--no-fund', '--silent', tarball], dir);
    const pkg = JSON.parse(readFileSync(join(dir, 'node_modules/switchboard-client/package.json'), 'utf8'));
    assert.ok(existsSync(join(dir, 'node_modules/switchboard-client', pkg.exports['.'].types)), 'types shipped');
    if (kind === 'commonjs') {
      // A CommonJS file cannot `import` statically: it uses import(), which Node supports everywhere.
      writeFileSync(join(dir, 'index.js'), `(async () => {${check('switchboard-client')}})().catch((e) => { console.error(e); process.exit(1); });`);
      // The bare file copied next to it works alone too: .mjs is ESM whatever the project says.
      copyFileSync(join(here, 'switchboard.mjs'), join(dir, 'switchboard.mjs'));
      writeFileSync(join(dir, 'copy.js'), `(async () => {${check('./switchboard.mjs')}})().catch((e) => { console.error(e); process.exit(1); });`);
      assert.match(node(['copy.js'], dir), /^ok /);
    } else {
      writeFileSync(join(dir, 'index.js'), `${check('switchboard-client')}`);
    }
    assert.match(node(['index.js'], dir), /^ok /, kind);
    console.log(`package: npm pack + install into a fresh ${kind} project: ok`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
