// node bench/node.mjs [N]: the SDK's seal and open rates in Node (one JSON line).
import * as sdk from '../dist/index.js';
import { sealOpen } from './core.js';

const result = await sealOpen(sdk, Number(process.argv[2] ?? 1000));
process.stdout.write(`${JSON.stringify({ runtime: `node ${process.versions.node}`, ...result })}\n`);
