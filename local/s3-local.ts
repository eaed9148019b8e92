// An S3-compatible server (s3rver, disk-backed) on 127.0.0.1, with its ObjectCreated
// notifications exposed so the local event source can forward them like S3 does.

import S3rver from 's3rver';

export interface RunningS3 {
  endpoint: string;
  onEvent(listener: (event: { Records: any[] }) => void): void;
  stop(): Promise<void>;
}

export async function startS3Local(directory: string, bucket: string): Promise<RunningS3> {
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
    allowMismatchedSignatures: true,
  });
  const { port } = await server.run();
  return {
    endpoint: `http://127.0.0.1:${port}`,
    onEvent: (listener) => server.on('event', listener),
    stop: () => server.close(),
  };
}
