// `livesync local up`: the schema comes from the synthesized template, and stopping
// leaves no Java process behind. Skipped when the tests run against an external stack.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { DescribeTableCommand, DescribeTimeToLiveCommand } from '@aws-sdk/client-dynamodb';
import { dynamoClient } from '../adapters/aws-clients';

// Global setup marks the run that started the embedded stack; the endpoints alone would not tell.
const maybe = process.env.LIVESYNC_EMBEDDED_STACK === '1' ? describe : describe.skip;

maybe('livesync local up', () => {
  test('creates the table as the CDK template defines it and stops cleanly on SIGTERM', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'livesync-local-'));
    const root = join(__dirname, '..');
    const child = spawn(join(root, 'node_modules/.bin/tsx'), ['cli/livesync.ts', 'local', 'up', '--json'], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'ignore'],
      env: { ...process.env, LIVESYNC_LOCAL_DIR: dir },
    });
    const env = JSON.parse(await new Promise<string>((resolve) => createInterface({ input: child.stdout! }).once('line', resolve)));
    const javaPid = Number(readFileSync(join(dir, 'dynamodb.pid'), 'utf8'));
    expect(readFileSync(`/proc/${javaPid}/cmdline`, 'utf8')).toContain('DynamoDBLocal');

    const ddb = dynamoClient({ endpoint: env.AWS_ENDPOINT_URL_DYNAMODB });
    const { Table } = await ddb.send(new DescribeTableCommand({ TableName: env.LIVESYNC_TABLE }));
    expect(Table!.KeySchema).toEqual([{ AttributeName: 'pk', KeyType: 'HASH' }, { AttributeName: 'sk', KeyType: 'RANGE' }]);
    expect(Table!.GlobalSecondaryIndexes!.map((g) => [g.IndexName, g.KeySchema!.map((k) => k.AttributeName)])).toEqual([['acrp', ['acrpPk', 'acrpSk']], ['pairs', ['pairsPk', 'pk']]]);
    expect(Table!.StreamSpecification).toEqual({ StreamEnabled: true, StreamViewType: 'NEW_AND_OLD_IMAGES' });
    const ttl = await ddb.send(new DescribeTimeToLiveCommand({ TableName: env.LIVESYNC_TABLE }));
    expect(ttl.TimeToLiveDescription).toMatchObject({ AttributeName: 'expiresAt', TimeToLiveStatus: 'ENABLED' });
    ddb.destroy();

    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    expect((await exited)[0]).toBe(0);
    expect(existsSync(`/proc/${javaPid}`)).toBe(false);
    expect(existsSync(join(dir, 'dynamodb.pid'))).toBe(false);
  });
});
