// Mirrors Metaparticle Sync's JavaScript client (metaparticle-io/sync,
// javascript/lib/lock.js and election.js), written anew for tests with
// Node's http module in place of the request package. Same requests in the
// same order, same reading of each status code:
//
//   lock:   GET /locks/NAME; on 404 or 200 PUT /locks/NAME (no body),
//           on anything else try again after the period.
//   PUT:    200 -> acquired (the callback runs on the first 200 only),
//           then hold after the period. Not 200 while held -> lost: the
//           lost callback, or process.exit() without one. Not 200 while
//           not held -> lock again after the period.
//   hold:   GET; on 200 PUT (a renewal); otherwise GET again after the period.
//   error:  the original reads response.statusCode of an undefined response
//           and the process dies; this one prints ERROR and exits 1.
//
// No keep-alive: the request package of that time opened a connection per
// request. election.js is a Lock whose callbacks are the leader's; in
// election mode the acquired and lost callbacks print LEADER and LOST and,
// as in the original, nothing more happens after a loss.
//
// Usage: node lock.js BASE_URL NAME PERIOD_MS lock|election
// Prints "GET <code>", "PUT <code>", "ACQUIRED" or "LEADER", "LOST", "ERROR <why>".
'use strict';
const http = require('http');

const [base, name, periodArg, mode] = process.argv.slice(2);
const period = Number(periodArg || 10000); // the original's 10 s
const url = base + '/locks/' + name;
const agent = new http.Agent({ keepAlive: false });

function call(method, done) {
  const req = http.request(url, { method, agent }, (res) => {
    res.resume();
    res.on('end', () => {
      console.log(method + ' ' + res.statusCode);
      done(res.statusCode);
    });
  });
  req.on('error', (err) => {
    console.log('ERROR ' + err.code);
    process.exit(1);
  });
  req.end();
}

const onAcquired = () => console.log(mode === 'election' ? 'LEADER' : 'ACQUIRED');
const onLost = mode === 'election' ? () => console.log('LOST') : null;

function lockInternal() {
  call('GET', (code) => {
    if (code === 404 || code === 200) {
      updateLock(false);
      return;
    }
    setTimeout(lockInternal, period);
  });
}

function updateLock(held) {
  call('PUT', (code) => {
    if (code === 200) {
      if (!held) onAcquired();
      setTimeout(holdLock, period);
      return;
    }
    if (!held) {
      setTimeout(lockInternal, period);
      return;
    }
    if (onLost) {
      onLost();
      return;
    }
    console.log('LOST');
    process.exit(0);
  });
}

function holdLock() {
  call('GET', (code) => {
    if (code === 200) {
      updateLock(true);
      return;
    }
    setTimeout(holdLock, period);
  });
}

lockInternal();
