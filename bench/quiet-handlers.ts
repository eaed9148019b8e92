// Imported first by a bench: the handlers it runs in-process (apply, seed) log every event as
// a JSON line on stdout unless LOG_LEVEL says otherwise, and stdout is for the bench's own
// JSON line. lambdas/config.ts reads LOG_LEVEL when it is first imported, which may be through
// any of the bench's imports (the CDK app imports handler settings), so this must come first.

process.env.LOG_LEVEL = 'warn';
