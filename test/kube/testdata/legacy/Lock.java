// Mirrors Metaparticle Sync's Java client (metaparticle-io/sync,
// java/src/main/java/io/metaparticle/sync/Lock.java and Election.java),
// written anew for tests with java.net.HttpURLConnection in place of
// Unirest (the original's HTTP library), one connection per request
// (http.keepAlive=false):
//
//   acquireLock: GET /locks/NAME (accept: application/json); on 404 or 200
//                PUT /locks/NAME (accept: application/json, no body); on PUT
//                200 hold the lock and return true. An IOException (a
//                refused connection) is printed and counts as not acquired.
//   lock():      acquireLock, else sleep the period and try again.
//   hold:        the listener's lockAcquired, then a maintainer thread: while
//                running: GET; on 200 PUT; if not 200, print it, call the
//                listener's lockLost and stop (lock mode, no listener: the
//                original calls System.exit(0)); sleep the period. An
//                IOException is printed and the loop goes round again at
//                once, without sleeping, as in the original.
//
// Election.java takes this Lock with itself as listener; election mode
// prints LEADER and LOST and then stops renewing (the original's run loop
// would call lock() again and fail, as the maintainer is still set).
//
// Usage: java -cp DIR Lock BASE_URL NAME PERIOD_MS lock|election
import java.io.IOException;
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URL;

public class Lock {
    private final String url;
    private final long period; // the original's WAIT_INTERVAL, 10 s
    private final boolean election;

    Lock(String base, String name, long period, boolean election) {
        this.url = base + "/locks/" + name;
        this.period = period;
        this.election = election;
    }

    static synchronized void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    private int call(String method) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL(url).openConnection();
        c.setRequestMethod(method);
        c.setRequestProperty("accept", "application/json");
        int code = c.getResponseCode();
        InputStream body = code < 400 ? c.getInputStream() : c.getErrorStream();
        if (body != null) {
            body.readAllBytes();
            body.close();
        }
        say(method + " " + code);
        return code;
    }

    private boolean acquireLock() {
        try {
            int code = call("GET");
            if (code == 404 || code == 200) {
                code = call("PUT");
            }
            if (code == 200) {
                holdLock();
                return true;
            }
        } catch (IOException ex) {
            say("ERROR " + ex);
        }
        return false;
    }

    void lock() throws InterruptedException {
        while (!acquireLock()) {
            Thread.sleep(period);
        }
    }

    private void holdLock() {
        say(election ? "LEADER" : "ACQUIRED");
        Thread maintainer = new Thread(() -> {
            while (true) {
                try {
                    int code = call("GET");
                    if (code == 200) {
                        code = call("PUT");
                    }
                    if (code != 200) {
                        say("LOST");
                        if (!election) {
                            System.exit(0);
                        }
                        return;
                    }
                    Thread.sleep(period);
                } catch (IOException ex) {
                    say("ERROR " + ex);
                } catch (InterruptedException ex) {
                    return;
                }
            }
        });
        maintainer.start();
    }

    public static void main(String[] args) throws Exception {
        System.setProperty("http.keepAlive", "false");
        new Lock(args[0], args[1], Long.parseLong(args[2]), args[3].equals("election")).lock();
        Thread.currentThread().join(); // live on, as the application would
    }
}
