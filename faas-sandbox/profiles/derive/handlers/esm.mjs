// The Node.js handler as an ES module (handler "esm.handler"): heavy
// built-in modules imported at module scope, top-level await, and the cases
// of index.js (imported from ESM as CommonJS). See ../../README.md.
import zlib from 'node:zlib';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import url from 'node:url';
import util from 'node:util';
import common from './index.js';

const here = path.dirname(url.fileURLToPath(import.meta.url));
// Top-level await: module initialisation that reads a file.
const self = await fs.promises.readFile(path.join(here, 'esm.mjs'));
const digest = crypto.createHash('sha1').update(zlib.gzipSync(self)).digest('hex');

export const handler = async (event, context) => {
  const r = await common.handler(event, context);
  return r && typeof r === 'object' && !('statusCode' in r) ? { ...r, esm: util.format('%s', digest) } : r;
};
