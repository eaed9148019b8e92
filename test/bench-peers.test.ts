// A bench's peers: present ones pass, a missing one stops the bench at once naming the
// command and its package when it cannot install it (not root), and nothing is installed then.

import { ensurePeers, MissingPeersError } from '../bench/peers';

afterEach(() => jest.restoreAllMocks());

test('commands on PATH pass without a word', () => {
  const log = jest.fn();
  ensurePeers([{ command: 'sh', pkg: 'dash' }], log);
  expect(log).not.toHaveBeenCalled();
});

test('a missing command, not root: MissingPeersError naming the command and the package, no install tried', () => {
  jest.spyOn(process, 'getuid').mockReturnValue(1000);
  const log = jest.fn();
  const peers = [
    { command: 'sh', pkg: 'dash' },
    { command: 'livesync-no-such-tool', pkg: 'livesync-no-such-pkg' },
  ];
  expect(() => ensurePeers(peers, log)).toThrow(MissingPeersError);
  expect(() => ensurePeers(peers, log)).toThrow(/'livesync-no-such-tool' \(package livesync-no-such-pkg\).*apt-get install livesync-no-such-pkg/);
  expect(log).not.toHaveBeenCalled(); // it said nothing about installing
});

test('a name that is not a plain command or package name is refused before any shell sees it', () => {
  expect(() => ensurePeers([{ command: 'x; rm -rf /', pkg: 'p' }], jest.fn())).toThrow(/bad peer/);
});
