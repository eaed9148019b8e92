// Keeps one plain line, "N passed, N failed, N skipped", for global teardown to print last
// (teardown runs after every reporter), so a run ends on a line CI can read.
class SummaryReporter {
  onRunComplete(_contexts, results) {
    globalThis.__LIVESYNC_SUMMARY__ = `${results.numPassedTests} passed, ${results.numFailedTests} failed, ${results.numPendingTests} skipped`;
  }
}
module.exports = SummaryReporter;
