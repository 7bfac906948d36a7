# Mirrors Metaparticle Sync's Python client (metaparticle-io/sync,
# python/metaparticle_sync/lock.py and election.py), written anew for tests
# with the same urllib calls:
#
#   acquire:    loop: GET /locks/NAME; on 404 or 200 PUT /locks/NAME (header
#               accept: application/json, no body); on PUT 200 start the
#               maintainer thread, run the acquired callback, return; else
#               sleep the period and try again.
#   maintainer: while running: GET; on 200 PUT; if the result is not 200,
#               print it and stop (the original then calls its lost callback
#               through a misspelt attribute, so the thread dies with an
#               AttributeError: either way the renewals stop); sleep the period.
#               Note it renews at once after acquiring, then every period.
#   errors:     urllib raises URLError on a refused connection: out of
#               acquire (the program ends) or out of the maintainer (the
#               thread dies, renewals stop). Printed here as ERROR.
#
# election.py acquires with this Lock and waits; the same requests. Election
# mode prints LEADER and LOST where lock mode prints ACQUIRED and LOST.
#
# Usage: python3 lock.py BASE_URL NAME PERIOD_MS lock|election
import sys
import threading
import time
import urllib.error
import urllib.request

base, name, period_ms, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
period = period_ms / 1000.0  # the original's 10 s
url = base + '/locks/' + name


said = threading.Lock()


def say(line):
    # One line at a time: print writes the text and its newline apart, so
    # the renewing thread's lines could otherwise land inside this one.
    with said:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()


def request(method, headers):
    req = urllib.request.Request(url, headers=headers)
    req.get_method = lambda: method
    try:
        code = urllib.request.urlopen(req).getcode()
    except urllib.error.HTTPError as ex:
        code = ex.code
    say('%s %d' % (method, code))
    return code


def get_lock():
    return request('GET', {})


def update_lock():
    return request('PUT', {'accept': 'application/json'})


def maintain():
    try:
        while True:
            code = get_lock()
            if code == 200:
                code = update_lock()
            if code != 200:
                say('LOST')
                return
            time.sleep(period)
    except urllib.error.URLError as ex:
        say('ERROR %s' % ex.reason)


def acquire():
    while True:
        code = get_lock()
        if code == 404 or code == 200:
            code = update_lock()
        if code == 200:
            t = threading.Thread(target=maintain, daemon=True)
            t.start()
            say('LEADER' if mode == 'election' else 'ACQUIRED')
            return t
        time.sleep(period)


try:
    acquire().join()
except urllib.error.URLError as ex:
    say('ERROR %s' % ex.reason)
    sys.exit(1)
# After a loss the original's process lives on without renewing; so does this.
threading.Event().wait()
