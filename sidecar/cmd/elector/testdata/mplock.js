// A stand-in for Metaparticle Sync's JavaScript lock client
// (metaparticle-io/sync javascript/lib/lock.js), with Node's built-in http
// module instead of the request package. It makes the same calls in the same
// order and reads the same status codes:
//
//   lock:      GET /locks/NAME; on 404 or 200 PUT /locks/NAME (no body),
//              otherwise try again after the interval.
//   PUT:       200 -> acquired (first time), hold: GET again after the
//              interval. Not 200 while held -> lost. Not 200 while not
//              held -> lock again after the interval.
//   hold:      GET; on 200 PUT (a renewal); otherwise GET again later.
//
// Metaparticle Sync's client waits 10 s between steps; the interval is the third argument
// here so that tests need not wait that long.
//
// Usage: node mplock.js BASE_URL NAME [INTERVAL_MS]
// Prints one line per step: "GET <code>", "PUT <code>", and "ACQUIRED",
// "RENEWED" or "LOST"; exits 0 after LOST, 1 if the elector is unreachable.
'use strict';
const http = require('http');

const [base, name, intervalArg] = process.argv.slice(2);
const interval = Number(intervalArg || 10000);
const url = base + '/locks/' + name;
let held = false;

function call(method, done) {
  const req = http.request(url, { method }, (res) => {
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
  req.end(); // no body, as Metaparticle Sync's request.put
}

function lock() {
  call('GET', (code) => {
    if (code === 404 || code === 200) {
      update();
      return;
    }
    setTimeout(lock, interval);
  });
}

function update() {
  call('PUT', (code) => {
    if (code === 200) {
      console.log(held ? 'RENEWED' : 'ACQUIRED');
      held = true;
      setTimeout(hold, interval);
      return;
    }
    if (held) {
      console.log('LOST');
      process.exit(0);
    }
    setTimeout(lock, interval);
  });
}

function hold() {
  call('GET', (code) => {
    if (code === 200) {
      update();
      return;
    }
    setTimeout(hold, interval);
  });
}

lock();
