// How every Lambda is bundled: esbuild, locally (no Docker).

import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';

export const LAMBDA_BUNDLING: nodejs.BundlingOptions = {
  minify: true,
  sourceMap: true,
  target: 'node22',
  format: nodejs.OutputFormat.CJS,
  // AWS SDK v3 is bundled instead of taken from the runtime, so the version is the one we tested.
  // @node-rs/crc32 is a native binary for the agent's host: left out, so core/crc32c.ts falls
  // back to its table code in Lambda.
  externalModules: ['@node-rs/crc32'],
};
