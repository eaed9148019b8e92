// The process side of local/lambda-process.ts: loads one handler module (argv[2]) and runs
// the export each IPC message names with its payload, answering with the result or the error
// (name, message, stack). Ends when its parent goes.

type Call = { id: number; name: string; input: unknown };

const modulePath = process.argv[2];
if (!modulePath || !process.send) {
  process.stderr.write('lambda-runner: run by local/lambda-process.ts (a handler module path and an IPC channel)\n');
  process.exit(2);
}
const loaded: Promise<Record<string, unknown>> = import(modulePath);

process.on('message', async ({ id, name, input }: Call) => {
  try {
    const fn = (await loaded)[name];
    if (typeof fn !== 'function') throw new Error(`${modulePath} has no handler '${name}'`);
    const result = await fn(input);
    process.send!({ id, ok: true, result: result ?? null });
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err));
    process.send!({ id, ok: false, error: { name: e.name, message: e.message, stack: e.stack } });
  }
});
process.on('disconnect', () => process.exit(0));
