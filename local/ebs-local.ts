// The EBS direct APIs on 127.0.0.1 (no emulator for them exists on npm; LocalStack community
// has none either): the REST-JSON subset livesync calls, with the rules AWS enforces, so the
// code that writes a recovered RP into a snapshot runs the same path here as against AWS.
// Clients reach it through AWS_ENDPOINT_URL_EBS.
//
// - StartSnapshot (POST /snapshots): VolumeSize in GiB (1–65536); ParentSnapshotId, if given, a
//   completed snapshot no larger than the new one, whose blocks the new one starts from;
//   ClientToken: the same token with the same request is the same snapshot, with another one a
//   ConflictException.
// - PutSnapshotBlock (PUT /snapshots/{id}/blocks/{index}): only while the snapshot is pending;
//   exactly 524,288 bytes (x-amz-Data-Length and the body); the block inside the volume;
//   x-amz-Checksum-Algorithm SHA256 and x-amz-Checksum the Base64 SHA-256 of the body, else
//   ValidationException. Answers with the checksum it computed.
// - CompleteSnapshot (POST /snapshots/completion/{id}): x-amz-ChangedBlocksCount must be the
//   number of distinct blocks written to this snapshot (else ValidationException, and the
//   snapshot stays pending here; AWS sets it to error); an aggregate checksum, if given
//   (LINEAR), is the SHA-256 of the written blocks' SHA-256 digests in block order.
// - ListSnapshotBlocks, GetSnapshotBlock (with the block token ListSnapshotBlocks gave),
//   ListChangedBlocks: on completed snapshots only; pages of MaxResults (100–10,000).
// Errors carry x-amzn-ErrorType and {"Message", "Reason"} as AWS's do (ValidationException
// 400, ResourceNotFoundException 404, ConflictException 503). Snapshots live in memory, each
// block once (blocks a child shares with its parent are not copied): enough for tests and
// the demo's disks, not for a terabyte.

import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export const EBS_BLOCK_SIZE = 512 * 1024;
const MAX_VOLUME_GIB = 65536;
const BLOCKS_PER_GIB = 2 ** 30 / EBS_BLOCK_SIZE;

interface Snapshot {
  id: string;
  status: 'pending' | 'completed';
  volumeSize: number;
  parentId?: string;
  startTime: number;
  description?: string;
  clientToken?: string;
  request: string;
  /** Block index → its data and Base64 SHA-256; inherited from the parent at start. */
  blocks: Map<number, { data: Buffer; sha256: string }>;
  /** Blocks written to this snapshot itself. */
  written: Set<number>;
}

class EbsError extends Error {
  constructor(
    readonly type: string,
    readonly status: number,
    message: string,
    readonly reason?: string,
  ) {
    super(message);
  }
}

const invalid = (message: string, reason?: string): EbsError => new EbsError('ValidationException', 400, message, reason);
const sha256 = (b: Buffer): Buffer => createHash('sha256').update(b).digest();

export interface RunningEbs {
  endpoint: string;
  /** A snapshot's state, for the local EC2 API (CreateVolume, RegisterImage take completed snapshots). */
  snapshotInfo(id: string): { status: 'pending' | 'completed'; volumeSize: number } | undefined;
  stop(): Promise<void>;
}

export async function startEbsLocal(): Promise<RunningEbs> {
  const snapshots = new Map<string, Snapshot>();
  const byToken = new Map<string, string>();

  const snapshot = (id: string, reason = 'SNAPSHOT_NOT_FOUND'): Snapshot => {
    const s = snapshots.get(id);
    if (!s) throw new EbsError('ResourceNotFoundException', 404, `The snapshot '${id}' does not exist.`, reason);
    return s;
  };
  const completed = (id: string): Snapshot => {
    const s = snapshot(id);
    if (s.status !== 'completed') throw invalid(`The snapshot '${id}' is not completed.`, 'INVALID_SNAPSHOT_ID');
    return s;
  };
  const tokenOf = (s: Snapshot, index: number): string => Buffer.from(`${s.id}:${index}:${s.blocks.get(index)!.sha256}`).toString('base64');
  const page = (q: URLSearchParams, indexes: number[]): { slice: number[]; next?: string } => {
    const max = q.has('maxResults') ? Number(q.get('maxResults')) : 10000;
    if (!Number.isInteger(max) || max < 100 || max > 10000) throw invalid('MaxResults must be between 100 and 10000.', 'INVALID_PARAMETER_VALUE');
    let from = Number(q.get('startingBlockIndex') ?? 0);
    const token = q.get('pageToken');
    if (token !== null) {
      from = Number(Buffer.from(token, 'base64').toString());
      if (!Number.isInteger(from) || from < 0) throw invalid('The page token is not valid.', 'INVALID_PAGE_TOKEN');
    }
    const rest = indexes.filter((i) => i >= from);
    const slice = rest.slice(0, max);
    return { slice, next: rest.length > max ? Buffer.from(String(rest[max])).toString('base64') : undefined };
  };

  const ops: { method: string; path: RegExp; op: string; run: (m: RegExpExecArray, q: URLSearchParams, req: IncomingMessage, body: Buffer) => { status: number; json?: unknown; headers?: Record<string, string>; raw?: Buffer } }[] = [
    {
      method: 'POST',
      path: /^\/snapshots$/,
      op: 'StartSnapshot',
      run: (_m, _q, _req, body) => {
        const r = JSON.parse(body.toString() || '{}') as { VolumeSize?: number; ParentSnapshotId?: string; ClientToken?: string; Description?: string };
        if (!Number.isInteger(r.VolumeSize) || r.VolumeSize! < 1 || r.VolumeSize! > MAX_VOLUME_GIB) throw invalid(`VolumeSize must be a whole number of GiB from 1 to ${MAX_VOLUME_GIB}.`, 'INVALID_VOLUME_SIZE');
        const request = JSON.stringify([r.VolumeSize, r.ParentSnapshotId ?? null, r.Description ?? null]);
        if (r.ClientToken) {
          const known = byToken.get(r.ClientToken);
          if (known) {
            const s = snapshots.get(known)!;
            if (s.request !== request) throw new EbsError('ConflictException', 503, 'The request uses the same client token as a previous, but non-identical request.');
            return { status: 201, json: describe(s) };
          }
        }
        let blocks = new Map<number, { data: Buffer; sha256: string }>();
        if (r.ParentSnapshotId) {
          const parent = snapshot(r.ParentSnapshotId, 'DEPENDENCY_RESOURCE_NOT_FOUND');
          if (parent.status !== 'completed') throw invalid(`The parent snapshot '${parent.id}' is not completed.`, 'INVALID_DEPENDENCY_REQUEST');
          if (parent.volumeSize > r.VolumeSize!) throw invalid(`VolumeSize ${r.VolumeSize} is smaller than the parent snapshot's ${parent.volumeSize} GiB.`, 'INVALID_VOLUME_SIZE');
          blocks = new Map(parent.blocks);
        }
        const s: Snapshot = { id: `snap-${randomBytes(8).toString('hex')}`, status: 'pending', volumeSize: r.VolumeSize!, parentId: r.ParentSnapshotId, startTime: Date.now() / 1000, description: r.Description, clientToken: r.ClientToken, request, blocks, written: new Set() };
        snapshots.set(s.id, s);
        if (r.ClientToken) byToken.set(r.ClientToken, s.id);
        return { status: 201, json: describe(s) };
      },
    },
    {
      method: 'PUT',
      path: /^\/snapshots\/([^/]+)\/blocks\/(\d+)$/,
      op: 'PutSnapshotBlock',
      run: (m, _q, req, body) => {
        const s = snapshot(m[1]);
        if (s.status !== 'pending') throw invalid(`The snapshot '${s.id}' is ${s.status}: blocks can be written only while it is pending.`, 'INVALID_SNAPSHOT_ID');
        const index = Number(m[2]);
        if (index >= s.volumeSize * BLOCKS_PER_GIB) throw invalid(`Block ${index} is past the end of a ${s.volumeSize} GiB volume.`, 'INVALID_BLOCK');
        const length = Number(req.headers['x-amz-data-length']);
        if (length !== EBS_BLOCK_SIZE || body.length !== EBS_BLOCK_SIZE) throw invalid(`The block data must be ${EBS_BLOCK_SIZE} bytes (x-amz-Data-Length ${req.headers['x-amz-data-length']}, body ${body.length}).`, 'INVALID_BLOCK');
        if (req.headers['x-amz-checksum-algorithm'] !== 'SHA256') throw invalid('x-amz-Checksum-Algorithm must be SHA256.', 'INVALID_PARAMETER_VALUE');
        const sum = sha256(body).toString('base64');
        if (req.headers['x-amz-checksum'] !== sum) throw invalid(`The checksum of block ${index} does not match its data.`, 'INVALID_PARAMETER_VALUE');
        s.blocks.set(index, { data: Buffer.from(body), sha256: sum });
        s.written.add(index);
        return { status: 201, headers: { 'x-amz-Checksum': sum, 'x-amz-Checksum-Algorithm': 'SHA256' } };
      },
    },
    {
      method: 'POST',
      path: /^\/snapshots\/completion\/([^/]+)$/,
      op: 'CompleteSnapshot',
      run: (m, _q, req) => {
        const s = snapshot(m[1]);
        const changed = Number(req.headers['x-amz-changedblockscount']);
        if (!Number.isInteger(changed) || changed < 0) throw invalid('x-amz-ChangedBlocksCount is required.', 'INVALID_PARAMETER_VALUE');
        if (s.status === 'completed') return { status: 202, json: { Status: 'completed' } };
        if (changed !== s.written.size) throw invalid(`ChangedBlocksCount ${changed} does not match the ${s.written.size} blocks written to '${s.id}'.`, 'INVALID_PARAMETER_VALUE');
        const aggregate = req.headers['x-amz-checksum'];
        if (aggregate !== undefined) {
          if (req.headers['x-amz-checksum-algorithm'] !== 'SHA256' || req.headers['x-amz-checksum-aggregation-method'] !== 'LINEAR') throw invalid('An aggregate checksum must be SHA256, LINEAR.', 'INVALID_PARAMETER_VALUE');
          const digests = [...s.written].sort((a, b) => a - b).map((i) => Buffer.from(s.blocks.get(i)!.sha256, 'base64'));
          if (sha256(Buffer.concat(digests)).toString('base64') !== aggregate) throw invalid('The aggregate checksum does not match the blocks written.', 'INVALID_PARAMETER_VALUE');
        }
        s.status = 'completed';
        return { status: 202, json: { Status: 'completed' } };
      },
    },
    {
      method: 'GET',
      path: /^\/snapshots\/([^/]+)\/blocks$/,
      op: 'ListSnapshotBlocks',
      run: (m, q) => {
        const s = completed(m[1]);
        const { slice, next } = page(q, [...s.blocks.keys()].sort((a, b) => a - b));
        return { status: 200, json: { Blocks: slice.map((i) => ({ BlockIndex: i, BlockToken: tokenOf(s, i) })), ExpiryTime: Date.now() / 1000 + 600, VolumeSize: s.volumeSize, BlockSize: EBS_BLOCK_SIZE, ...(next ? { NextToken: next } : {}) } };
      },
    },
    {
      method: 'GET',
      path: /^\/snapshots\/([^/]+)\/blocks\/(\d+)$/,
      op: 'GetSnapshotBlock',
      run: (m, q) => {
        const s = completed(m[1]);
        const index = Number(m[2]);
        const block = s.blocks.get(index);
        if (!block || q.get('blockToken') !== tokenOf(s, index)) throw invalid(`The block token is not valid for block ${index} of '${s.id}'.`, 'INVALID_BLOCK_TOKEN');
        return { status: 200, raw: block.data, headers: { 'x-amz-Data-Length': String(block.data.length), 'x-amz-Checksum': block.sha256, 'x-amz-Checksum-Algorithm': 'SHA256' } };
      },
    },
    {
      method: 'GET',
      path: /^\/snapshots\/([^/]+)\/changedblocks$/,
      op: 'ListChangedBlocks',
      run: (m, q) => {
        const second = completed(m[1]);
        const firstId = q.get('firstSnapshotId');
        const first = firstId ? completed(firstId) : undefined;
        if (first && first.volumeSize > second.volumeSize) throw invalid('The first snapshot is larger than the second.', 'UNRELATED_SNAPSHOTS');
        const all = new Set([...second.blocks.keys(), ...(first?.blocks.keys() ?? [])]);
        const differ = [...all].filter((i) => first?.blocks.get(i)?.sha256 !== second.blocks.get(i)?.sha256).sort((a, b) => a - b);
        const { slice, next } = page(q, differ);
        return {
          status: 200,
          json: {
            ChangedBlocks: slice.map((i) => ({ BlockIndex: i, ...(first?.blocks.has(i) ? { FirstBlockToken: tokenOf(first, i) } : {}), ...(second.blocks.has(i) ? { SecondBlockToken: tokenOf(second, i) } : {}) })),
            ExpiryTime: Date.now() / 1000 + 600,
            VolumeSize: second.volumeSize,
            BlockSize: EBS_BLOCK_SIZE,
            ...(next ? { NextToken: next } : {}),
          },
        };
      },
    },
  ];

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://local');
      const body = Buffer.concat(chunks);
      try {
        for (const o of ops) {
          const m = req.method === o.method ? o.path.exec(url.pathname) : null;
          if (!m) continue;
          const out = o.run(m, url.searchParams, req, body);
          if (out.raw) {
            res.writeHead(out.status, { 'content-type': 'application/octet-stream', 'content-length': out.raw.length, ...out.headers });
            res.end(out.raw);
          } else {
            const text = out.json === undefined ? '' : JSON.stringify(out.json);
            res.writeHead(out.status, { 'content-type': 'application/json', ...out.headers });
            res.end(text);
          }
          return;
        }
        throw invalid(`${req.method} ${url.pathname} is not an EBS direct API this emulator serves.`);
      } catch (err) {
        const e = err instanceof EbsError ? err : new EbsError('InternalServerException', 500, String(err));
        res.writeHead(e.status, { 'content-type': 'application/json', 'x-amzn-ErrorType': e.type });
        res.end(JSON.stringify({ Message: e.message, ...(e.reason ? { Reason: e.reason } : {}) }));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    snapshotInfo: (id) => {
      const s = snapshots.get(id);
      return s && { status: s.status, volumeSize: s.volumeSize };
    },
    stop: () => new Promise((resolve) => server.close(() => resolve())),
  };

  function describe(s: Snapshot): Record<string, unknown> {
    return { SnapshotId: s.id, OwnerId: '000000000000', Status: s.status, StartTime: s.startTime, VolumeSize: s.volumeSize, BlockSize: EBS_BLOCK_SIZE, ...(s.parentId ? { ParentSnapshotId: s.parentId } : {}), ...(s.description ? { Description: s.description } : {}) };
  }
}
